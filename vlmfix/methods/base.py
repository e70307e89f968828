"""The small protocol every method runtime follows (see the package docstring)."""

from __future__ import annotations


class MethodRuntime:
    #: lower starts first at a new sequence (VHR's exact selection must run before the others set up their state)
    start_priority = 10
    #: lower contributes first within one attention call: the kernel's order of effects (pre-softmax emphasis,
    #: post-softmax redistribution, output scale) is the order methods are documented to compose in
    contribute_priority = 10

    def __init__(self, cfg, adapter):
        self.cfg = cfg
        self.adapter = adapter
        self.n_layers = len(adapter.decoder_layers())
        self.layers = frozenset(cfg.resolve_layers(self.n_layers))

    def install(self, session) -> list:
        return []

    def start_sequence(self, session, kwargs: dict) -> None:
        pass

    def extend_sequence(self, session, n_new: int) -> None:
        pass

    def contribute(self, call) -> None:
        raise NotImplementedError
