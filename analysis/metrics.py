"""The attention metrics of SPEC §4, computed from exact attention weights.

Weights arrive as maps of a block of query rows: (B, H, rows, keys), row r being absolute position
start + r and keys running from 0 to at least that position (entries j > i are ignored). ``LayerStats``
accumulates one layer over row blocks and sequences; ``summarise`` turns the layers of one probe length
into numbers. ``LayerSupport`` is its cheap part alone (empty rows, non-zeros, occupied tiles), which
``analysis.diagnostics`` runs while training. Choices where SPEC is silent:

- Rows are normalised by Σ_j |w_ij| for every variant (for softmax this is the identity). A row whose
  weights are all exactly zero ("empty") is left out of the first-token ratio, entropy and largest
  weight, and the share of such rows is reported beside them. Non-zeros per row are averaged over
  all rows, empty ones included (they have none), and also over non-empty rows.
- Sink rate (Gu et al. 2025, SPEC §4a): α_0 of a (sequence, layer, head) triple is the mean normalised
  weight on key 0 over ALL its rows, an empty row counting 0; the rate is the share of triples with
  α_0 > ε. Beside it, as a named diagnostic only (``sink_rate_nonempty_rows``), the rule of metrics
  version 1: the mean over non-empty rows, a triple whose rows are all empty left out. When most rows
  are empty that rule lets row 0 (whose only key is token 0, so its normalised weight on it is 1) decide
  α_0 and overstates the rate.
- Entropy is in nats, of the normalised |w| of a row.
- Two-view correlation: Pearson correlation between view 1's and view 2's score maps over the causal
  entries of a head, pooled over rows and sequences, averaged over heads; given for the raw scores
  (``score_correlation``: q̂·k̂ for TDA, q·k for the Differential Transformer, before threshold or
  softmax) and for the weights (``view_correlation``: ``maps`` "view1" and "view2"). Consensus
  survivors: causal entries non-zero in both views, per row.

``METRICS_VERSION`` numbers the definitions above. Summaries keep aggregates only, so numbers of an
older version cannot be converted: readers refuse to mix versions (analysis.results).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

SINK_EPSILON = 0.3
# Tile of the attention map (query rows x keys) whose occupancy is counted: the kernels' common tile.
TILE = 64
SINK_PROBE_TOKENS = 64
# Version of the definitions the summaries hold. 1 (summaries without the field): α_0 of the sink rate
# averaged over non-empty rows only. 2: Gu et al.'s denominator (every row, empty rows counting 0).
METRICS_VERSION = 2


def causal_keep(start: int, stop: int, n_keys: int, device=None) -> torch.Tensor:
    """(stop − start, n_keys) boolean mask: True where key j ≤ row position i."""
    return torch.arange(n_keys, device=device)[None, :] <= torch.arange(start, stop, device=device)[:, None]


def normalise_rows(w: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|w| / Σ_j |w| over causal entries (keep), and the mask of empty rows (Σ_j |w| = 0), whose
    normalised weights are left at 0. w: (..., rows, keys) -> ((..., rows, keys), (..., rows) bool)."""
    a = w.abs().double() * keep
    total = a.sum(-1, keepdim=True)
    empty = total.squeeze(-1) == 0
    return a / torch.where(total > 0, total, torch.ones_like(total)), empty


def harmonic(n: int) -> float:
    """H_n = 1 + 1/2 + … + 1/n."""
    return float(sum(1.0 / k for k in range(1, n + 1)))


def uniform_first_token_ratio(length: int) -> float:
    """The first-token ratio of uniform causal attention averaged over rows 0 … T−1: H_T / T."""
    return harmonic(length) / length


def sink_rate(alpha0: torch.Tensor, epsilon: float = SINK_EPSILON) -> float:
    """Share of (sequence, layer, head) triples with α_0 > epsilon; NaN entries (no α_0: all rows empty
    under the non-empty-rows rule) are left out. alpha0: any shape. Returns NaN when no triple has an α_0."""
    valid = alpha0[~torch.isnan(alpha0)]
    return float((valid > epsilon).double().mean()) if valid.numel() else float("nan")


def mark_tiles(tiles: torch.Tensor, start: int, stop: int, support: torch.Tensor) -> None:
    """Mark in ``tiles`` (B, H, n, n) bool, in place, the TILE x TILE tiles of the map that rows
    [start, stop) touch and where ``support`` (B, H, stop − start, keys) holds a True entry."""
    B, H, R, K = support.shape
    padded = torch.nn.functional.pad(support, (0, -(-K // TILE) * TILE - K))
    by_key_tile = padded.view(B, H, R, -1, TILE).any(-1)  # (B, H, rows, key tiles)
    for t in range(start // TILE, (stop - 1) // TILE + 1):  # the row tiles these rows fall in
        rows = slice(max(start, t * TILE) - start, min(stop, (t + 1) * TILE) - start)
        hit = by_key_tile[:, :, rows].any(2)
        tiles[:, :, t, :hit.shape[-1]] |= hit


@dataclass
class LayerSupport:
    """Where one layer's weights are non-zero, over row blocks and sequences of ``length`` tokens.

    Per row position (length,): rows seen, empty rows (no non-zero causal weight in the final map) and
    non-zeros of the final map, summed over sequences and heads. Per TILE x TILE tile of the causal map:
    how many tiles hold a non-zero weight in any view (what a kernel that skips empty tiles would still
    compute). Cheap (boolean masks only), so that it can run while training; ``LayerStats`` builds on it."""

    length: int
    heads: int
    device: str | torch.device = "cpu"

    def __post_init__(self) -> None:
        z = lambda: torch.zeros(self.length, dtype=torch.float64, device=self.device)  # noqa: E731
        self.rows, self.empty, self.nonzeros = z(), z(), z()
        self.n_tiles = n = -(-self.length // TILE)  # per side
        self._batch_tiles: torch.Tensor | None = None  # (B, H, n, n) bool: tiles holding a non-zero weight
        self.causal_tiles = n * (n + 1) // 2  # per (sequence, head): key tile <= query tile
        self.tiles_seen, self.tiles_occupied = 0, 0

    def add(self, start: int, stop: int, maps: dict[str, torch.Tensor]
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Add a block of rows [start, stop) of one batch; maps as ``attn.maps``. Call ``end_batch``
        after the last block of a batch. Returns what it computed on the way, for ``LayerStats``: the
        causal mask (rows, keys), the maps on ``device`` and their causal non-zero masks, by map name."""
        w = maps["combined"]
        B, H, R, K = w.shape
        if H != self.heads or R != stop - start or stop > self.length or K < stop:
            raise ValueError(f"maps of shape {tuple(w.shape)} do not fit rows [{start}, {stop}) of a layer "
                             f"with {self.heads} heads and {self.length} tokens")
        keep = causal_keep(start, stop, K, self.device)
        here = {name: m.to(self.device) for name, m in maps.items()}
        nonzero = {name: (m != 0) & keep for name, m in here.items()}
        rows = slice(start, stop)
        self.rows[rows] += B * H
        self.empty[rows] += (~nonzero["combined"].any(-1)).sum((0, 1)).double()
        self.nonzeros[rows] += nonzero["combined"].sum((0, 1, 3)).double()
        if self._batch_tiles is None:
            self._batch_tiles = torch.zeros(B, H, self.n_tiles, self.n_tiles, dtype=torch.bool, device=self.device)
        mark_tiles(self._batch_tiles, start, stop, functools.reduce(torch.logical_or, nonzero.values()))
        return keep, here, nonzero

    def end_batch(self) -> None:
        """Close a batch: count its occupied tiles."""
        if self._batch_tiles is not None:
            B, H = self._batch_tiles.shape[:2]
            self.tiles_seen += B * H * self.causal_tiles
            self.tiles_occupied += int(self._batch_tiles.sum())
            self._batch_tiles = None

    def empty_share(self) -> float:
        """Share of the rows seen with no non-zero weight."""
        return _ratio(float(self.empty.sum()), float(self.rows.sum()))

    def nonzeros_per_row(self) -> float:
        """Non-zero weights per row, over every row seen (empty ones count 0)."""
        return _ratio(float(self.nonzeros.sum()), float(self.rows.sum()))

    def tile_occupancy(self) -> float:
        """Share of the causal TILE x TILE tiles seen that hold any non-zero weight."""
        return _ratio(self.tiles_occupied, self.tiles_seen)


class LayerStats(LayerSupport):
    """Running sums for one layer over row blocks and sequences of ``length`` tokens.

    Besides ``LayerSupport``'s rows, empty rows, non-zeros and tiles: per head (H,), exact zeros per
    view and causal entries. Per row position (length,): sums over non-empty rows of the first-token
    ratio, entropy and largest weight; sums over all rows of (two views) consensus survivors. Per
    (sequence, head), for α_0: the normalised weights on key 0 summed over rows (an empty row adds 0),
    the count of rows and of non-empty rows, and the same three for row 0 alone. Per head (H, 6) for two
    views: n, Σx, Σy, Σx², Σy², Σxy of the two views' weights and, when ``add_scores`` is called, of
    their raw scores. Sums live on ``device`` (where the maps are reduced, so long maps are not copied
    to the host)."""

    def __init__(self, length: int, heads: int, views: int, device: str | torch.device = "cpu") -> None:
        self.views = views
        self.alpha: list[torch.Tensor] = []
        super().__init__(length, heads, device)

    def __post_init__(self) -> None:
        super().__post_init__()
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=self.device)  # noqa: E731
        names = ["combined"] + [f"view{v}" for v in range(1, self.views + 1)]
        self.zeros = {name: z(self.heads) for name in names}
        self.entries = z(self.heads)
        T = self.length
        self.first, self.entropy, self.top, self.consensus = z(T), z(T), z(T), z(T)
        self.moments, self.score_moments = z(self.heads, 6), z(self.heads, 6)
        self._batch_alpha: torch.Tensor | None = None

    def add(self, start: int, stop: int, maps: dict[str, torch.Tensor]) -> None:
        """Add a block of rows [start, stop) of one batch; maps as ``attn.maps``. Call ``end_batch``
        after the last block of a batch."""
        keep, here, nonzero = super().add(start, stop, {name: maps[name] for name in self.zeros})
        B = here["combined"].shape[0]
        self.entries += B * float(keep.sum())
        for name, nz in nonzero.items():
            self.zeros[name] += (keep & ~nz).sum((0, 2, 3)).double()
        p, empty = normalise_rows(here["combined"], keep)
        full = ~empty
        rows = slice(start, stop)
        self.first[rows] += (p[..., 0] * full).sum((0, 1))
        plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros((), dtype=p.dtype))
        self.entropy[rows] += (-plogp.sum(-1) * full).sum((0, 1))
        self.top[rows] += (p.amax(-1) * full).sum((0, 1))
        on_key0, counted, seen = p[..., 0], full.double(), torch.ones_like(p[..., 0])  # p is 0 in empty rows
        alpha = torch.stack([on_key0.sum(-1), seen.sum(-1), counted.sum(-1),
                             on_key0[..., 0], seen[..., 0], counted[..., 0]], dim=-1)
        if start > 0:
            alpha[..., 3:] = 0.0
        self._batch_alpha = alpha if self._batch_alpha is None else self._batch_alpha + alpha
        if self.views == 2:
            self.consensus[rows] += (nonzero["view1"] & nonzero["view2"]).sum((0, 1, 3)).double()
            self.moments += _moments(here["view1"], here["view2"], keep)

    def add_scores(self, start: int, stop: int, scores: list[torch.Tensor]) -> None:
        """Add the two views' raw scores of rows [start, stop), each (B, H, rows, keys ≥ stop), to the
        score correlation (causal entries only)."""
        keep = causal_keep(start, stop, scores[0].shape[-1], self.device)
        self.score_moments += _moments(scores[0].to(self.device), scores[1].to(self.device), keep)

    def end_batch(self) -> None:
        """Close a batch: its per-(sequence, head) sums for α_0 are kept, its occupied tiles counted."""
        if self._batch_alpha is not None:
            self.alpha.append(self._batch_alpha)
            self._batch_alpha = None
        super().end_batch()

    def alpha0(self, nonempty_rows: bool = False, skip_first_row: bool = False) -> torch.Tensor:
        """α_0 of every (sequence, head) pair seen, (sequences, H): the mean normalised weight on key 0
        over every row, an empty row counting 0 (Gu et al.'s α_0, SPEC §4a). With ``nonempty_rows``,
        the mean over non-empty rows only (metrics version 1's rule, a diagnostic), NaN where every row
        was empty. ``skip_first_row`` leaves out row 0, whose only key is token 0 (its normalised
        weight on it is 1 when the row is non-empty)."""
        if not self.alpha:
            return torch.empty(0, self.heads, dtype=torch.float64)
        total, seen, counted, first, first_seen, first_counted = torch.cat(self.alpha).unbind(-1)
        rows = counted if nonempty_rows else seen
        if skip_first_row:
            total, rows = total - first, rows - (first_counted if nonempty_rows else first_seen)
        return torch.where(rows > 0, total / rows.clamp_min(1), torch.full_like(total, float("nan"))).cpu()

    def correlation(self) -> torch.Tensor:
        """Per-head Pearson correlation of the two views' weights, (H,); NaN where a view is constant."""
        return _pearson(self.moments)

    def score_correlation(self) -> torch.Tensor:
        """Per-head Pearson correlation of the two views' raw scores, (H,) (NaN without ``add_scores``)."""
        return _pearson(self.score_moments)

    def row_curves(self) -> dict[str, torch.Tensor]:
        """Per row position (length,): empty share; first-token ratio, entropy and largest weight over
        non-empty rows (NaN where all were empty); non-zeros and consensus survivors over all rows."""
        full = self.rows - self.empty
        over_full = lambda s: torch.where(full > 0, s / full.clamp_min(1), torch.full_like(s, float("nan")))  # noqa: E731
        rows = self.rows.clamp_min(1)
        out = {"empty_share": self.empty / rows, "first_token_ratio": over_full(self.first),
               "entropy": over_full(self.entropy), "top_weight": over_full(self.top),
               "nonzeros": self.nonzeros / rows}
        if self.views == 2:
            out["consensus"] = self.consensus / rows
        return out


def _moments(x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per head (H, 6): n, Σx, Σy, Σx², Σy², Σxy over the entries of (B, H, rows, keys) where keep."""
    x, y, m = x.double() * keep, y.double() * keep, keep.double().expand_as(x)
    return torch.stack([s.sum((0, 2, 3)) for s in (m, x, y, x * x, y * y, x * y)], dim=-1)


def _pearson(moments: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per row of (H, 6) moments; NaN where n = 0 or a variable is constant."""
    n, sx, sy, sxx, syy, sxy = moments.unbind(-1)
    n = n.clamp_min(1)
    cov = sxy / n - (sx / n) * (sy / n)
    denom = ((sxx / n - (sx / n) ** 2) * (syy / n - (sy / n) ** 2)).clamp_min(0).sqrt()
    ok = denom > 1e-300
    return torch.where(ok, cov / torch.where(ok, denom, torch.ones_like(denom)), torch.full_like(cov, float("nan")))


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float("nan")


def summarise(stats: list[LayerStats]) -> dict:
    """The numbers of one probe length from its layers' stats (every layer the same length, heads and
    views): sparsity overall / per layer / per head / per view, empty-row share, first-token ratio with
    its uniform reference, entropy, largest weight, non-zeros per row, and for two views the correlation
    and consensus survivors. Means are over rows (non-empty rows for the ratios), pooled over layers."""
    if not stats:
        raise ValueError("stats must hold at least one layer")
    T = stats[0].length
    out: dict = {"length": T, "layers": len(stats), "heads": stats[0].heads}
    entries = sum(float(s.entries.sum()) for s in stats)
    out["sparsity"] = _ratio(sum(float(s.zeros["combined"].sum()) for s in stats), entries)
    out["sparsity_per_layer"] = [_ratio(float(s.zeros["combined"].sum()), float(s.entries.sum())) for s in stats]
    out["sparsity_per_head"] = [(s.zeros["combined"] / s.entries.clamp_min(1)).tolist() for s in stats]
    out["sparsity_per_view"] = {
        view: {"overall": _ratio(sum(float(s.zeros[view].sum()) for s in stats), entries),
               "per_layer": [_ratio(float(s.zeros[view].sum()), float(s.entries.sum())) for s in stats]}
        for view in stats[0].zeros}
    rows = sum(float(s.rows.sum()) for s in stats)
    full = rows - sum(float(s.empty.sum()) for s in stats)
    out["empty_row_share"] = _ratio(rows - full, rows)
    out["empty_row_share_per_layer"] = [s.empty_share() for s in stats]
    for key, attr in (("first_token_ratio", "first"), ("entropy", "entropy"), ("top_weight", "top")):
        out[key] = _ratio(sum(float(getattr(s, attr).sum()) for s in stats), full)
        out[f"{key}_per_layer"] = [_ratio(float(getattr(s, attr).sum()), float((s.rows - s.empty).sum()))
                                   for s in stats]
    out["first_token_ratio_uniform"] = uniform_first_token_ratio(T)
    out["nonzeros_per_row"] = _ratio(sum(float(s.nonzeros.sum()) for s in stats), rows)
    out["nonzeros_per_nonempty_row"] = _ratio(sum(float(s.nonzeros.sum()) for s in stats), full)
    out["nonzeros_per_row_per_layer"] = [s.nonzeros_per_row() for s in stats]
    out["tile"] = TILE
    out["tile_occupancy"] = _ratio(sum(s.tiles_occupied for s in stats), sum(s.tiles_seen for s in stats))
    out["tile_occupancy_per_layer"] = [s.tile_occupancy() for s in stats]
    if stats[0].views == 2:
        out["consensus_per_row"] = _ratio(sum(float(s.consensus.sum()) for s in stats), rows)
        out["consensus_per_row_per_layer"] = [_ratio(float(s.consensus.sum()), float(s.rows.sum())) for s in stats]
        out["view_correlation_per_layer"] = [_nanmean(s.correlation()) for s in stats]
        out["view_correlation"] = _nanmean(torch.tensor(out["view_correlation_per_layer"]))
        out["score_correlation_per_layer"] = [_nanmean(s.score_correlation()) for s in stats]
        out["score_correlation"] = _nanmean(torch.tensor(out["score_correlation_per_layer"]))
    return out


def sink_summary(stats: list[LayerStats], epsilon: float = SINK_EPSILON) -> dict:
    """Gu et al.'s sink rate over the (sequence, layer, head) triples of the layers' stats (SPEC §4a):
    the rate, the rate per layer and the mean α_0 per layer, with the share of empty rows beside them.
    Then the diagnostic of metrics version 1, under its own names: the rate with α_0 averaged over
    non-empty rows only (triples whose rows are all empty left out, their count given), also without
    row 0 (when most rows are empty, row 0, whose only key is token 0, dominates that α_0)."""
    def flat(alphas: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([a.flatten() for a in alphas]) if alphas else torch.empty(0, dtype=torch.float64)

    gu = [s.alpha0() for s in stats]
    nonempty = [s.alpha0(nonempty_rows=True) for s in stats]
    nonempty_without_first = flat([s.alpha0(nonempty_rows=True, skip_first_row=True) for s in stats])
    rows = sum(float(s.rows.sum()) for s in stats)
    return {"sink_rate": sink_rate(flat(gu), epsilon), "epsilon": epsilon,
            "sink_rate_per_layer": [sink_rate(a, epsilon) for a in gu],
            "alpha0_per_layer": [_nanmean(a.flatten()) for a in gu],
            "triples": int(flat(gu).numel()),
            "empty_row_share": _ratio(sum(float(s.empty.sum()) for s in stats), rows),
            "empty_row_share_per_layer": [s.empty_share() for s in stats],
            "sink_rate_nonempty_rows": sink_rate(flat(nonempty), epsilon),
            "sink_rate_nonempty_rows_per_layer": [sink_rate(a, epsilon) for a in nonempty],
            "sink_rate_nonempty_rows_without_row0": sink_rate(nonempty_without_first, epsilon),
            "triples_without_nonempty_row": int(torch.isnan(flat(nonempty)).sum())}


def random_survivors(head_dim: int, positions: list[int], beta: float = 1.0, trials: int = 64,
                     seed: int = 0) -> list[float]:
    """Theory check of SPEC §1: mean number of keys j ≤ i with q̂·k̂_j > τ_i = β·sqrt(2 ln(i+1)/d) for
    random unit vectors in dimension ``head_dim``, at each row position i of ``positions``, over
    ``trials`` draws. The bound is (i+1)·(i+1)^(−β²) (≤ 1 at β = 1)."""
    if head_dim < 1 or trials < 1:
        raise ValueError(f"head_dim and trials must be >= 1, got {head_dim} and {trials}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in positions:
        tau = beta * math.sqrt(2.0 * math.log(i + 1) / head_dim)
        q = torch.nn.functional.normalize(torch.randn(trials, 1, head_dim, generator=gen), dim=-1)
        k = torch.nn.functional.normalize(torch.randn(trials, i + 1, head_dim, generator=gen), dim=-1)
        out.append(float(((q * k).sum(-1) > tau).double().sum(-1).mean()))
    return out


def survivor_bound(positions: list[int], beta: float = 1.0) -> list[float]:
    """SPEC §1's bound on the expected survivors of row i: (i+1)^(1−β²)."""
    return [float((i + 1) ** (1.0 - beta * beta)) for i in positions]
