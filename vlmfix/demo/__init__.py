"""Side-by-side demo: the same question to the unmodified model and to the patched one, with heat maps.

``vlmfix.demo.compare.compare`` (no UI) is the core; ``build_app`` wraps it in a Gradio page; ``vlmfix demo``
launches that page. Gradio is imported only by ``build_app``, so the comparison logic works without the ``demo``
extra installed. (The function is deliberately not re-exported here: ``vlmfix.demo.compare`` stays the module, so
``import vlmfix.demo.compare`` and monkeypatching its lock behave as expected.)
"""


def build_app(*args, **kwargs):
    """See :func:`vlmfix.demo.app.build_app` (imports Gradio)."""
    from .app import build_app as _build

    return _build(*args, **kwargs)


__all__ = ["build_app"]
