"""Sampling the nets of every split: held-out sets first, training nets avoid them.

The splits (smolforge.nets.reducer.SplitSampler): test (the training lengths),
stratified12 (a fixed length, stratified by step count, in the spirit of the A::B
challenge), ood (lengths beyond the training range), swaps (the worst cases A^k D^k and
C^k B^k, whose k^2 rewrites are the most a net of length 2k can take), val, and train.
"""

from __future__ import annotations

from dataclasses import dataclass

from smolforge.core.cli import StageError
from smolforge.nets import reducer


@dataclass(frozen=True)
class GenerateParams:
    seed: int
    train_lengths: list[int]  # [min, max], inclusive
    n_train: int
    train_vanishing_share: float  # share of training nets built to reduce to the empty net
    n_val: int
    n_test: int
    max_heldout_share: float  # at most this share of all nets of a length is held out
    ood_lengths: list[int]
    n_ood: int  # per OOD length
    stratified_length: int
    stratified_per_steps: int
    stratified_max_steps: int
    swap_sizes: list[int]  # k of the worst-case nets A^k D^k and C^k B^k (set swaps)

    def check(self) -> list[str]:
        errors = []
        lo_hi = self.train_lengths
        if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
            errors.append(f"train_lengths: expected [min, max] with 1 <= min <= max, got {lo_hi}")
        if not 0 <= self.train_vanishing_share <= 1:
            errors.append("train_vanishing_share: expected a share between 0 and 1")
        if not 0 < self.max_heldout_share < 1:
            errors.append("max_heldout_share: expected a share strictly between 0 and 1")
        for name in ("n_train", "n_val", "n_test", "n_ood", "stratified_per_steps"):
            if getattr(self, name) < 0:
                errors.append(f"{name}: expected a count >= 0")
        if any(k < 1 for k in self.swap_sizes):
            errors.append(f"swap_sizes: expected sizes >= 1, got {self.swap_sizes}")
        if any(n < 1 for n in self.ood_lengths):
            errors.append(f"ood_lengths: expected lengths >= 1, got {self.ood_lengths}")
        if self.stratified_max_steps > reducer.max_steps(self.stratified_length):
            errors.append(
                f"stratified_max_steps: nets of length {self.stratified_length} take at most "
                f"{reducer.max_steps(self.stratified_length)} steps"
            )
        return errors


def make_record(split: str, i: int, net: str) -> dict:
    red = reducer.reduce(net)
    return {
        "id": f"{split}-{i:06d}",
        "source": "generate",
        "split": split,
        "net": reducer.to_text(net),
        "length": len(net),
        "steps": red.steps,
        "answer": reducer.to_text(red.normal_form),
    }


def swap_nets(k: int) -> list[str]:
    """A^k D^k and C^k B^k: every A must pass every D (k^2 swaps), the longest reduction
    of a net of length 2k."""
    return ["A" * k + "D" * k, "C" * k + "B" * k]


def sample_splits(p: GenerateParams) -> dict[str, list[str]]:
    """Compact nets of every split, held-out sets first (so training never meets them)."""
    sampler = reducer.SplitSampler(p.seed, p.max_heldout_share)
    lengths = range(p.train_lengths[0], p.train_lengths[1] + 1)
    splits: dict[str, list[str]] = {}
    try:
        swaps = sampler.claim("swaps", [net for k in p.swap_sizes for net in swap_nets(k)])  # fixed: first
        splits["test"] = sampler.heldout("test", p.n_test, lengths)
        splits["stratified12"] = sampler.by_steps(
            "stratified12", p.stratified_length, p.stratified_per_steps, p.stratified_max_steps
        )
        splits["ood"] = [
            net for n in p.ood_lengths for net in sampler.heldout("ood", p.n_ood, range(n, n + 1))
        ]
        splits["swaps"] = swaps
        splits["val"] = sampler.heldout("val", p.n_val, lengths)
    except ValueError as e:
        raise StageError(f"params.yaml: generate: {e}") from None
    splits["train"] = sampler.train(p.n_train, lengths, p.train_vanishing_share)
    return splits
