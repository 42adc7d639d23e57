"""STanH: a learnable sum-of-tanh quantizer (``stanh``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import qbench
import qbench.coding

#: Outer cell bound standing in for +-infinity (far outside any latent's range).
FAR = 1e4


class STanH(qbench.Quantizer):
    r"""STanH (Presta, Tartaglione, Fiandrotti, Grangetto, "STanH: Parametric
    Quantization for Variable Rate Learned Image Compression", IEEE TIP 2024,
    arXiv 2410.00557; authors' code: EIDOSLAB/StanH).

    With ``L`` levels, step heights ``w_i > 0`` and sorted thresholds ``b_i``
    (``i = 1..L-1``) and slope ``beta``::

        STanH(x) = sum_i (w_i / 2) * tanh(beta * (x - b_i))

    As ``beta -> inf`` it is the staircase that maps the cell
    ``(b_{j}, b_{j+1})`` to the level ``c_j = sum_{i<=j} w_i - sum_i w_i / 2``.
    Initialisation: ``w_i = 1`` and ``b_i`` at the half-integers, so the
    staircase equals uniform rounding on ``[-E, E]``, ``E = (L - 1) / 2``
    (values beyond saturate at +-E). ``w = exp(log_w)`` keeps the heights
    positive; ``b`` is sorted before use.

    * Training: the soft value ``STanH(y - mu) + mu`` for both rate and
      distortion. Eval / ``quantize``: the hard staircase, around the means.
    * ``bins``: the cell of each value's nearest level ``j``, translated by the
      value's offset from ``c_j`` (so a hard level gets exactly its cell and a
      soft value a cell that moves with it, like ``y -+ 1/2`` for rounding).
      ``cells = "decision"`` (default) uses the hard quantizer's own decision
      cell ``[b_j, b_{j+1}]``; ``cells = "midpoint"`` the cell between the
      midpoints of neighbouring levels (what the authors' code uses). The
      outer cells extend to +-1e4.
    * beta annealing (``annealing``): ``"gap"`` (default, as the authors): after
      each training step (``end_step``), ``beta <- min(beta + gap_factor * gap,
      beta_max)`` with ``gap = mean |soft - hard|`` of that step's forward pass;
      ``"schedule"``: geometric from ``beta`` to ``beta_max`` over training
      progress (``set_progress``).

    Default ``levels = 61`` (``E = 30``, enough for the latents of small
    CompressAI models; the paper uses about 60 per latent): 120 parameters.
    """

    def __init__(
        self,
        levels: int = 61,
        beta: float = 10.0,
        beta_max: float = 1000.0,
        annealing: str = "gap",
        gap_factor: float = 5.0,
        cells: str = "decision",
    ) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        if annealing not in ("gap", "schedule"):
            raise ValueError(f"annealing must be 'gap' or 'schedule', got {annealing!r}")
        if cells not in ("decision", "midpoint"):
            raise ValueError(f"cells must be 'decision' or 'midpoint', got {cells!r}")
        if not 0 < beta <= beta_max:
            raise ValueError(f"need 0 < beta <= beta_max, got {beta}, {beta_max}")
        extent = (levels - 1) / 2.0
        self.log_w = nn.Parameter(torch.zeros(levels - 1))
        self.b = nn.Parameter(torch.arange(levels - 1, dtype=torch.float32) - extent + 0.5)
        self.register_buffer("beta", torch.tensor(float(beta)))
        self.beta_start, self.beta_max = float(beta), float(beta_max)
        self.annealing, self.gap_factor, self.cells = annealing, float(gap_factor), cells

    # -- the staircase ---------------------------------------------------------
    @property
    def w(self) -> Tensor:
        return torch.exp(self.log_w)

    def thresholds(self) -> Tensor:
        return torch.sort(self.b)[0]

    def levels(self) -> Tensor:
        """The ``L`` reconstruction levels ``c_j`` (increasing)."""
        w = self.w
        c = torch.cat([w.new_zeros(1), torch.cumsum(w, 0)])
        return c - w.sum() / 2

    def cell_bounds(self) -> tuple[Tensor, Tensor]:
        """``(lower, upper)`` of each level's cell (``cells`` chooses which), shape ``(L,)``."""
        if self.cells == "decision":
            inner = self.thresholds()
        else:
            c = self.levels()
            inner = (c[1:] + c[:-1]) / 2
        far = inner.new_full((1,), FAR)
        return torch.cat([-far, inner]), torch.cat([inner, far])

    def soft(self, v: Tensor, beta: float | Tensor | None = None) -> Tensor:
        beta = float(self.beta) if beta is None else beta
        b = self.thresholds().to(v.dtype)
        w = self.w.to(v.dtype)
        return ((w / 2) * torch.tanh(beta * (v.unsqueeze(-1) - b))).sum(-1)

    def symbols(self, y: Tensor, means: Tensor | None = None) -> Tensor:
        """Index ``j`` of the staircase cell of each value (0..L-1, int64)."""
        v = y if means is None else y - means
        b = self.thresholds().detach().to(v.dtype)
        return torch.bucketize(v.contiguous(), b, right=True)

    def from_symbols(self, idx: Tensor, means: Tensor | None = None) -> Tensor:
        c = self.levels().detach()
        out = c[idx.long()]
        return out if means is None else out.to(means.dtype) + means

    def tables(self, entropy: qbench.coding.EntropyTables) -> qbench.coding.CdfTables:
        """Tables over the ``L`` levels' cells (symbols are level indices)."""
        return entropy.cell_tables(*(t.detach() for t in self.cell_bounds()))

    def quantize(self, y: Tensor, means: Tensor | None = None) -> Tensor:
        out = self.from_symbols(self.symbols(y, means), means)
        return out.to(y.dtype)

    def nearest_level(self, v: Tensor) -> Tensor:
        c = self.levels().detach().to(v.dtype)
        mid = (c[1:] + c[:-1]) / 2
        return torch.bucketize(v.detach().contiguous(), mid)

    def bins(self, y_hat: Tensor, means: Tensor | None = None) -> tuple[Tensor, Tensor]:
        v = y_hat if means is None else y_hat - means
        j = self.nearest_level(v)
        c = self.levels().to(v.dtype)
        lower, upper = self.cell_bounds()
        shift = v - c[j]
        lo, hi = lower.to(v.dtype)[j] + shift, upper.to(v.dtype)[j] + shift
        if means is not None:
            lo, hi = lo + means, hi + means
        return lo, hi

    # -- training --------------------------------------------------------------
    def forward(self, y: Tensor, means: Tensor | None = None) -> qbench.Quantized:
        if not self.training:
            return super().forward(y, means)
        v = y if means is None else y - means
        s = self.soft(v)
        if self.annealing == "gap" and torch.is_grad_enabled():
            # a measurement for end_step, not state: a probe's forward changes no beta
            with torch.no_grad():
                self._gap = float((s - self.quantize(v)).abs().mean())
        out = s if means is None else s + means
        return qbench.Quantized(rate=out, dist=out)

    def end_step(self) -> None:
        """Gap-driven annealing after each training step: ``beta += gap_factor * gap``."""
        gap, self._gap = getattr(self, "_gap", None), None
        if self.annealing == "gap" and gap is not None:
            self.beta.fill_(min(float(self.beta) + self.gap_factor * gap, self.beta_max))

    def set_progress(self, t: float) -> None:
        super().set_progress(t)
        if self.annealing == "schedule":
            ratio = self.beta_max / self.beta_start
            self.beta.fill_(self.beta_start * ratio**self.progress)

    def interpolate(self, other: STanH, a: float) -> None:
        """Set (w, b) = (1 - a) (w1, b1) + a (w2, b2) of ``self`` (1) and ``other`` (2)."""
        with torch.no_grad():
            w = (1 - a) * self.w + a * other.w
            b = (1 - a) * self.thresholds() + a * other.thresholds()
            self.log_w.copy_(torch.log(w))
            self.b.copy_(b)
            self.beta.fill_(max(float(self.beta), float(other.beta)))

    def extra_repr(self) -> str:
        return f"L={self.log_w.numel() + 1}, beta={float(self.beta):.1f}, cells={self.cells}"


def _count() -> int:
    return sum(p.numel() for p in STanH().parameters())


@qbench.hookimpl
def qbench_register_quantizers(register):
    register(
        "stanh",
        STanH,
        description="learnable sum of tanh steps, beta annealed (Presta et al., TIP 2024)",
        parameters=_count(),
    )
