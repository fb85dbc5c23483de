"""Step-based learning-rate schedules for never-ending training.

Training has no epochs and no known end, so every schedule here is a function of the number of
steps done and of the losses it has observed, never of a total. Each schedule owns its whole
dynamic state and exposes it through ``state_dict``/``load_state_dict`` (plain Python numbers, so a
checkpoint loaded with ``weights_only=True`` can hold it), which makes a resumed run pick the same
learning rate the uninterrupted run would have.

Protocol used by the trainer, once per optimizer update::

    set_lr(optimizer, schedule.lr)      # LR for the step about to run
    ... forward, backward, optimizer.step() ...
    schedule.step(all_reduced_loss)     # advance; returns the LR for the next step
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from seer_core.bounds import Count, Factor, NonNegative, Patience, Smoothing, check


class Schedule:
    """Common base: linear warmup from ``start_lr`` to ``base_lr`` over ``warmup_steps`` steps.

    Subclasses only say what happens after warmup (``_after_warmup_lr``) and what they learn from
    a loss (``_observe``); the step counter, warmup and state handling live here so that every
    schedule honours warmup the same way.
    """

    kind: ClassVar[str] = "schedule"

    def __init__(self, base_lr: float, warmup_steps: int = 0, start_lr: float = 0.0) -> None:
        check("base_lr", base_lr, NonNegative)
        check("start_lr", start_lr, NonNegative)
        check("warmup_steps", warmup_steps, Count)
        self.base_lr = float(base_lr)
        self.start_lr = float(start_lr)
        self.warmup_steps = warmup_steps
        self.steps_done = 0

    @property
    def lr(self) -> float:
        """LR for the next step (index ``steps_done``)."""
        t = self.steps_done
        if t < self.warmup_steps:
            return self.start_lr + (self.base_lr - self.start_lr) * t / self.warmup_steps
        return self._after_warmup_lr(t - self.warmup_steps)

    def step(self, loss: float | None = None) -> float:
        """Record one finished update (and its all-reduced loss, if any); return the next LR.

        The loss of a warmup step is passed on too: schedules that smooth the loss can use it to
        warm their average up, but they must not take decisions on it.
        """
        in_warmup = self.steps_done < self.warmup_steps
        if loss is not None:
            value = float(loss)
            if math.isfinite(value):
                self._observe(value, in_warmup)
        self.steps_done += 1
        return self.lr

    def _after_warmup_lr(self, steps_after_warmup: int) -> float:
        raise NotImplementedError

    def _observe(self, loss: float, in_warmup: bool) -> None:
        """Learn from a finite loss; the default schedule ignores losses."""

    def state_dict(self) -> dict[str, Any]:
        """Dynamic state only: hyperparameters come from the config on resume."""
        return {"kind": self.kind, "steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"schedule state is for {state.get('kind')!r}, this schedule is "
                             f"{self.kind!r}")
        self.steps_done = int(state["steps_done"])


class Constant(Schedule):
    """Warmup, then ``base_lr`` forever (the reference against which the others are judged)."""

    kind = "constant"

    def _after_warmup_lr(self, steps_after_warmup: int) -> float:
        return self.base_lr


class WarmupCosine(Schedule):
    """Warmup, cosine decay to ``final_lr`` over ``cosine_steps``, then ``final_lr`` forever.

    The cosine length is a budget chosen up front rather than a run length, so a never-ending run
    simply continues at ``final_lr`` once the budget is spent.
    """

    kind = "warmup_cosine"

    def __init__(
        self,
        base_lr: float,
        final_lr: float,
        warmup_steps: int,
        cosine_steps: int,
        start_lr: float = 0.0,
    ) -> None:
        super().__init__(base_lr, warmup_steps, start_lr)
        check("final_lr", final_lr, NonNegative)
        check("cosine_steps", cosine_steps, Count)
        self.final_lr = float(final_lr)
        self.cosine_steps = cosine_steps

    def _after_warmup_lr(self, steps_after_warmup: int) -> float:
        if steps_after_warmup >= self.cosine_steps:
            return self.final_lr
        progress = steps_after_warmup / self.cosine_steps
        return self.final_lr + 0.5 * (self.base_lr - self.final_lr) * (
            1.0 + math.cos(math.pi * progress)
        )


class PlateauHalving(Schedule):
    """SEER's "fixed-then-halve": keep the LR until the loss stops improving, then cut it.

    The loss of a single step is far too noisy to judge a plateau, so decisions use a
    bias-corrected exponential moving average (bias correction keeps the first values after
    start-up from being dragged towards zero). A step counts as "no improvement" unless the
    smoothed loss beats the best smoothed loss so far by more than ``min_delta`` (relative).
    After ``patience`` such steps in a row the LR is multiplied by ``factor`` (never below
    ``min_lr``) and, for ``cooldown`` steps, nothing is decided, to let the average catch up
    with the effect of the cut. Everything depends only on the sequence of losses fed in, so DDP
    ranks fed the same all-reduced loss take the same decisions without talking to each other.
    """

    kind = "plateau_halving"

    def __init__(
        self,
        base_lr: float,
        warmup_steps: int,
        patience: int,
        min_delta: float,
        smoothing: float = 0.99,
        cooldown: int = 0,
        min_lr: float = 0.0,
        factor: float = 0.5,
        start_lr: float = 0.0,
        hold_steps: int = 0,
    ) -> None:
        super().__init__(base_lr, warmup_steps, start_lr)
        check("hold_steps", hold_steps, Count)
        check("patience", patience, Patience)
        check("min_delta", min_delta, NonNegative)
        check("smoothing", smoothing, Smoothing)
        check("cooldown", cooldown, Count)
        check("min_lr", min_lr, NonNegative)
        check("factor", factor, Factor)
        if min_lr > base_lr:
            raise ValueError(f"min_lr ({min_lr}) must not exceed base_lr ({base_lr})")
        self.patience = patience
        #: No decision before this many steps (besides warmup): while the task itself gets
        #: harder (a ramped augmentation), a rising loss is not a plateau.
        self.hold_steps = hold_steps
        self.min_delta = float(min_delta)
        self.smoothing = float(smoothing)
        #: ...nor for three time constants of the average after the hold: at its end the
        #: average still lags a loss that rose through it, so it keeps rising for a while and
        #: the first best would be a stale, too low value. Both runs of the `local` preset on
        #: issue 10's stream halved exactly at hold + patience (step 1710) that way, while
        #: their loss was about to fall. Three time constants leave 5% of the lag.
        self.settle_steps = math.ceil(3.0 / (1.0 - self.smoothing)) if hold_steps else 0
        self.cooldown = cooldown
        self.min_lr = float(min_lr)
        self.factor = float(factor)
        self.level = self.base_lr
        self.ema = 0.0
        self.observed = 0
        self.best = math.inf
        #: Steps in a row without improvement (not the trainer's non-finite `bad_steps`).
        self.flat_steps = 0
        self.cooldown_left = 0
        self.reductions = 0

    @property
    def smoothed_loss(self) -> float | None:
        """Bias-corrected moving average of the losses observed so far (None before any)."""
        if self.observed == 0:
            return None
        return self.ema / (1.0 - self.smoothing**self.observed)

    def _after_warmup_lr(self, steps_after_warmup: int) -> float:
        return self.level

    def _observe(self, loss: float, in_warmup: bool) -> None:
        self.ema = self.smoothing * self.ema + (1.0 - self.smoothing) * loss
        self.observed += 1
        if in_warmup or self.steps_done < self.hold_steps + self.settle_steps:
            return
        smoothed = self.smoothed_loss
        assert smoothed is not None
        if math.isinf(self.best) or smoothed < self.best - self.min_delta * abs(self.best):
            self.best = smoothed
            self.flat_steps = 0
        else:
            self.flat_steps += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.flat_steps = 0
            return
        if self.flat_steps >= self.patience and self.level > self.min_lr:
            self.level = max(self.level * self.factor, self.min_lr)
            self.reductions += 1
            self.flat_steps = 0
            self.cooldown_left = self.cooldown

    def state_dict(self) -> dict[str, Any]:
        """Progress, plus the base LR the level was reached from (to rescale it on resume)."""
        return {**super().state_dict(), **{name: getattr(self, name) for name in _PROGRESS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores progress; the knobs stay those this schedule was built with (the config's).

        The level is progress measured against the base LR, so when the base changed (a new
        `optim.lr`, batch size or world size) it is rescaled to keep the same number of halvings
        from the new base; it is then held within this schedule's [min_lr, base_lr]. What is
        left of a cooldown is cut to the configured cooldown.
        """
        super().load_state_dict(state)
        level = float(state["level"])
        saved_base = float(state["base_lr"])
        if saved_base > 0 and saved_base != self.base_lr:
            level *= self.base_lr / saved_base
        self.level = min(max(level, self.min_lr), self.base_lr)
        self.ema, self.best = float(state["ema"]), float(state["best"])
        self.observed, self.flat_steps, self.reductions = (
            int(state[key]) for key in ("observed", "flat_steps", "reductions"))
        self.cooldown_left = min(int(state["cooldown_left"]), self.cooldown)


#: What `PlateauHalving.state_dict` saves besides the step count.
_PROGRESS = ("base_lr", "level", "ema", "observed", "best", "flat_steps", "cooldown_left",
             "reductions")


SCHEDULES: dict[str, type[Schedule]] = {s.kind: s for s in (PlateauHalving, WarmupCosine, Constant)}


def build_schedule(name: str, **kwargs: Any) -> Schedule:
    """Build a schedule by its config name, so configs can switch schedules with one field."""
    try:
        cls = SCHEDULES[name]
    except KeyError:
        allowed = ", ".join(sorted(SCHEDULES))
        raise ValueError(f"unknown schedule {name!r}; allowed names: {allowed}") from None
    return cls(**kwargs)
