"""``vlmfix`` command line: a thin click layer over the Python API.

Sub-commands are imported lazily so that ``vlmfix score ...`` starts fast and does not import torch-heavy modules it
does not need. Each owner module exposes one click object:

- ``eval``    -> ``vlmfix.eval.cli:eval_group``   (POPE / CHAIR generation + scoring)
- ``score``   -> ``vlmfix.eval.cli:score_group``  (score outputs made elsewhere)
- ``testbed`` -> ``vlmfix.testbed.cli:testbed_group`` (synthetic world + small VLM)
- ``demo``    -> ``vlmfix.demo.cli:demo``          (Gradio side-by-side comparison)
"""

from __future__ import annotations

import importlib

import click

_LAZY = {
    "eval": ("vlmfix.eval.cli", "eval_group", "Generate answers/captions with a (patched) model and score POPE / CHAIR."),
    "score": ("vlmfix.eval.cli", "score_group", "Score POPE answers or CHAIR captions produced elsewhere."),
    "testbed": ("vlmfix.testbed.cli", "testbed_group", "Build the synthetic world and train / inspect the testbed VLM."),
    "demo": ("vlmfix.demo.cli", "demo", "Launch the Gradio baseline-vs-mitigated comparison demo."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(_LAZY))

    def get_command(self, ctx, name):
        if name in _LAZY:
            module, attr, _ = _LAZY[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = [(name, _LAZY[name][2]) for name in sorted(_LAZY)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vlmfix")
def cli():
    """vlmfix: training-free hallucination mitigation for Hugging Face VLMs."""


def main():  # pragma: no cover - console entry
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
