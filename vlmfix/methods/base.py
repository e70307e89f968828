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


class PerHeadTable:
    """A constant table for the (batch row, head) pairs of an attention call's queries, made again only when the batch,
    the head count or the device change: it is looked up in every layer call of every decode step, where a tuple
    compare is the whole cost. ``make(query)`` builds it."""

    def __init__(self, make):
        self._make = make
        self._table = None
        self._made_for = None  # (batch, heads, device index)

    def __call__(self, query):
        shape = query.shape
        where = (shape[0], shape[1], query.get_device())
        if where != self._made_for:
            self._table = self._make(query)
            self._made_for = where
        return self._table
