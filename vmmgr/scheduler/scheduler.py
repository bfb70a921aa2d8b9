"""The scheduler: filters, then weighers, then device choice, over a frozen snapshot. No I/O.

``place`` decides one VM and claims nothing; ``place_batch`` decides N VMs against one working
copy, so each decision sees the claims of the ones before it (scaling, recovery). Both return
Placements; nothing-fits is a Placement with ``host=None`` (see results.py for why).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vmmgr.errors import InvalidArgument
from vmmgr.snapshot import ClusterSnapshot, PlacementRequest

from .config import BatchOrder, SchedulerConfig
from .filters import BUILTIN_FILTERS, Filter, FilterContext, HostView, VectorFilter
from .results import Explanation, FilterReport, Placement, RankedHost
from .weighers import BUILTIN_WEIGHERS, VectorWeigher, Weigher
from .working import ClusterIndex, Demand, FloatArray, IntArray, WorkingState, largest_first

DEVICE_ASSIGNMENT = "device_assignment"  # hosts that passed the counts but not a device pick
_MIN = np.minimum.reduce  # the ufunc reductions skip ndarray.min()'s Python-level wrapper
_MAX = np.maximum.reduce


class Scheduler:
    """Stateless apart from a one-entry cache of the last snapshot's index (pure: the same
    snapshot and request always give the same answer)."""

    def __init__(
        self,
        config: SchedulerConfig | None = None,
        *,
        filters: Sequence[Filter] | None = None,
        weighers: Sequence[Weigher] | None = None,
    ) -> None:
        self.config = config or SchedulerConfig()
        if filters is None:
            filters = [BUILTIN_FILTERS[name]() for name in self.config.enabled_filters]
        self.filters: tuple[Filter, ...] = tuple(filters)
        # protocol isinstance checks are slow: decide once which filters run vectorised
        self._filter_plan: tuple[tuple[Filter, VectorFilter | None], ...] = tuple(
            (f, f if isinstance(f, VectorFilter) else None) for f in self.filters
        )
        self._zero_reports = {f.name: FilterReport(f.name, 0) for f in self.filters}
        if weighers is None:
            weighers = [cls() for cls in BUILTIN_WEIGHERS.values()]
        pairs: list[tuple[Weigher, float]] = []
        for w in weighers:
            mult = self.config.weigher_multipliers.get(w.name)
            if mult is None:
                mult = float(getattr(w, "multiplier", 1.0))
            if mult != 0.0:
                pairs.append((w, mult))
        self.weighers: tuple[tuple[Weigher, float], ...] = tuple(pairs)
        self._weigher_plan: tuple[tuple[Weigher, VectorWeigher | None, float], ...] = tuple(
            (w, w if isinstance(w, VectorWeigher) else None, m) for w, m in pairs
        )
        self._cache: tuple[ClusterSnapshot, ClusterIndex] | None = None

    # -- public API --

    def index(self, snapshot: ClusterSnapshot) -> ClusterIndex:
        """The arrays for a snapshot (built once and reused while the same object is passed)."""
        cached = self._cache
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        ix = ClusterIndex(snapshot, self.config)
        self._cache = (snapshot, ix)
        return ix

    def place(
        self,
        snapshot: ClusterSnapshot,
        request: PlacementRequest,
        *,
        explain: bool = False,
        ranked: int | None = None,
    ) -> Placement:
        """Rank hosts for one request. ``explain`` adds reason samples and device picks for every
        ranked host (the dry-run RPC); samples are always present when nothing fits. ``ranked``
        hosts are returned (default ``config.ranked_limit``)."""
        ix = self.index(snapshot)
        demand = ix.demand(request)
        limit = self.config.ranked_limit if ranked is None else max(1, ranked)
        placement, _ = self._decide(WorkingState(ix), demand, explain, limit)
        return placement

    def place_batch(
        self,
        snapshot: ClusterSnapshot,
        requests: Sequence[PlacementRequest],
        *,
        order: BatchOrder = BatchOrder.GIVEN,
        explain: bool = False,
        ranked: int = 1,
    ) -> list[Placement]:
        """Place N VMs with consistent claims; results in input order. A VM that does not fit
        gets ``host=None`` and the others still go on (callers wanting all-or-nothing check
        ``all(p.ok ...)``). The old host of a VM being re-placed keeps its usage. Each placement
        carries ``ranked`` ranked hosts (default 1: the chosen one with its weigher breakdown;
        a batch of thousands keeps thousands of rankings alive otherwise)."""
        ix = self.index(snapshot)
        demands: list[Demand] = []
        seen: set[str] = set()
        for n, req in enumerate(requests):
            if req.vm_id in seen:
                raise InvalidArgument(f"requests[{n}].vm_id", f"duplicate vm id {req.vm_id!r}")
            seen.add(req.vm_id)
            demands.append(ix.demand(req, f"requests[{n}]."))
        if order == BatchOrder.LARGEST_FIRST:
            sequence = largest_first(enumerate(demands))
        else:
            sequence = list(range(len(demands)))
        state = WorkingState(ix)
        out: list[Placement | None] = [None] * len(demands)
        for n in sequence:
            placement, pick = self._decide(state, demands[n], explain, max(1, ranked))
            if pick is not None:
                h, picks, col = pick
                state.claim(h, demands[n], picks, col)
            out[n] = placement
        return [p for p in out if p is not None]

    # -- the decision --

    def _decide(
        self, state: WorkingState, demand: Demand, explain: bool, limit: int
    ) -> tuple[Placement, tuple[int, list[tuple[int, str, str | None]], int | None] | None]:
        ix = state.ix
        req = demand.request
        ctx = FilterContext(state, demand)
        cand: IntArray = ix.all_idx
        rejected: list[tuple[Filter, IntArray]] = []  # only filters that rejected something
        for f, vf in self._filter_plan:
            if len(cand) == 0:
                break
            if vf is not None:
                if not vf.applies(req, ctx):
                    continue
                m = vf.mask(cand, req, ctx)
            else:
                m = np.array(
                    [f.passes(HostView(int(i), ix.hosts[int(i)]), req, ctx) is None for i in cand],
                    dtype=np.bool_,
                )
            if int(np.count_nonzero(m)) == len(cand):
                continue
            rejected.append((f, cand[~m]))
            cand = cand[m]

        ranked_idx, scores, contribs = self._rank(cand, req, ctx, limit)
        chosen: tuple[int, list[tuple[int, str, str | None]], int | None] | None = None
        failed: list[int] = []
        picks_by_host: dict[int, list[tuple[int, str, str | None]]] = {}
        walked = 0
        while walked < len(ranked_idx):
            h = int(cand[ranked_idx[walked]])
            walked += 1
            got = state.choose(h, demand, None)
            if got is None:
                failed.append(h)
            else:
                picks_by_host[h] = got[0]
                if chosen is None:
                    chosen = (h, got[0], got[1])
                    if not explain:
                        break
            if len(picks_by_host) >= limit:
                break
            if walked == len(ranked_idx) and chosen is None and len(ranked_idx) < len(cand):
                ranked_idx = self._rest(ranked_idx, scores)  # rare: every top host failed

        show_samples = explain or chosen is None
        reports = self._reports(rejected, req, ctx, show_samples)
        if failed:
            reason = "device counts fit, but no consistent pick (IOMMU group / NUMA / mixed needs)"
            samples = tuple((ix.names[h], reason) for h in failed[: self.config.explain_samples])
            reports.append(FilterReport(DEVICE_ASSIGNMENT, len(failed), samples))
        explanation = Explanation(
            vm_id=req.vm_id,
            hosts_total=ix.n,
            hosts_passed=len(cand) - len(failed),
            filters=tuple(reports),
        )

        failed_set = set(failed)
        shown = [p for p in ranked_idx[: limit + len(failed)] if int(cand[p]) not in failed_set][
            :limit
        ]
        names = [name for name, _ in contribs]
        if len(shown) == 1:
            table = [[float(c[shown[0]]) for _, c in contribs]]
        else:
            table = np.stack([c[shown] for _, c in contribs], axis=1).tolist() if contribs else []
        shown_scores = scores[shown].tolist()
        ranked: list[RankedHost] = []
        for row, pos in enumerate(shown):
            h = int(cand[pos])
            picks_h = picks_by_host.get(h)
            ranked.append(
                RankedHost(
                    host=ix.names[h],
                    score=shown_scores[row],
                    weights=tuple(zip(names, table[row], strict=True)) if contribs else (),
                    devices=tuple(state.describe(h, picks_h)) if picks_h else (),
                )
            )

        if chosen is None:
            return (
                Placement(req.vm_id, None, (), tuple(ranked), explanation),
                None,
            )
        h, picks, col = chosen
        cell = ix.col_cell_id[h][col] if col is not None and ix.col_cell_id[h] else None
        placement = Placement(
            vm_id=req.vm_id,
            host=ix.names[h],
            devices=tuple(state.describe(h, picks)),
            ranked=tuple(ranked),
            explanation=explanation,
            numa_cell=cell,
        )
        return placement, chosen

    def _rank(
        self, cand: IntArray, req: PlacementRequest, ctx: FilterContext, limit: int
    ) -> tuple[list[int], FloatArray, list[tuple[str, FloatArray]]]:
        """Positions into ``cand`` of the best ``limit`` hosts, best first (ties: snapshot
        host order), the scores, and each weigher's contribution."""
        k = len(cand)
        scores: FloatArray = np.zeros(k, dtype=np.float64)
        contribs: list[tuple[str, FloatArray]] = []
        if k == 0:
            return [], scores, contribs
        for w, vw, mult in self._weigher_plan:
            if vw is not None:
                raw = vw.weigh_many(cand, req, ctx)
            else:
                ix = ctx.state.ix
                raw = np.array(
                    [w.weigh(HostView(int(i), ix.hosts[int(i)]), req, ctx) for i in cand],
                    dtype=np.float64,
                )
            if raw is None:
                continue
            lo = _MIN(raw)
            span = _MAX(raw) - lo
            if span <= 1e-12:
                c = np.zeros(k, dtype=np.float64)  # no opinion among these hosts
            else:
                c = np.subtract(raw, lo, dtype=np.float64)
                c *= mult / span
                scores += c
            contribs.append((w.name, c))
        if k > limit:
            top = np.argpartition(-scores, limit - 1)[:limit]
            threshold = scores[top].min()
            sel = np.flatnonzero(scores >= threshold)
        else:
            sel = np.arange(k)
        head = sel[np.lexsort((sel, -scores[sel]))][:limit]
        return [int(p) for p in head], scores, contribs

    @staticmethod
    def _rest(head: list[int], scores: FloatArray) -> list[int]:
        """The full best-first order, continuing after ``head``."""
        full = np.lexsort((np.arange(len(scores)), -scores))
        seen = set(head)
        return head + [int(p) for p in full if int(p) not in seen]

    def _reports(
        self,
        rejected: list[tuple[Filter, IntArray]],
        req: PlacementRequest,
        ctx: FilterContext,
        samples: bool,
    ) -> list[FilterReport]:
        """One report per filter, in filter order; zero reports are shared immutable objects."""
        by_name = {f.name: (f, hosts) for f, hosts in rejected}
        out = []
        ix = ctx.state.ix
        for f in self.filters:
            got = by_name.get(f.name)
            if got is None:
                out.append(self._zero_reports[f.name])
                continue
            hosts = got[1]
            if not samples:
                out.append(FilterReport(f.name, len(hosts)))
                continue
            pairs = []
            for i in hosts[: self.config.explain_samples]:
                hv = HostView(int(i), ix.hosts[int(i)])
                pairs.append((hv.name, f.passes(hv, req, ctx) or "rejected"))
            out.append(FilterReport(f.name, len(hosts), tuple(pairs)))
        return out
