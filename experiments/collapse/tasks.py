"""The function-fitting tasks of Lu, Shin, Su & Karniadakis (2019) and their data.

Each task maps inputs in [-1, 1]^d to targets:

- ``abs``:      f(x) = |x|                                   (d = 1)
- ``xsin5x``:   f(x) = x sin(5x)                             (d = 1)
- ``step_sin``: f(x) = 1{x > 0} + 0.2 sin(5x)                (d = 1)
- ``abs2d``:    f(x) = [|x1 + x2|, |x1 - x2|]                (d = 2, two outputs)

Inputs are drawn uniformly from [-1, 1]^d by a generator seeded with the data
seed (training set) and the data seed + 1 (test set), so every run of a study
sees the same points: the init is the only thing that varies. Tasks with the
same input dimension share their inputs, so whether an init leaves a network
born dead on the training inputs depends on the input set, not the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Task:
    """A target function on [-1, 1]^in_dim with out_dim outputs."""

    name: str
    formula: str
    in_dim: int
    out_dim: int
    target: Callable[[torch.Tensor], torch.Tensor]  # (n, in_dim) -> (n, out_dim)

    @property
    def input_set(self) -> str:
        """The name of the inputs this task shares with the others of its dimension."""
        return f"x{self.in_dim}d"


def _abs(x: torch.Tensor) -> torch.Tensor:
    return x.abs()


def _xsin5x(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sin(5 * x)


def _step_sin(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).to(x.dtype) + 0.2 * torch.sin(5 * x)


def _abs2d(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([(x[:, 0] + x[:, 1]).abs(), (x[:, 0] - x[:, 1]).abs()], dim=1)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("abs", "|x|", 1, 1, _abs),
        Task("xsin5x", "x sin(5x)", 1, 1, _xsin5x),
        Task("step_sin", "1{x>0} + 0.2 sin(5x)", 1, 1, _step_sin),
        Task("abs2d", "[|x1+x2|, |x1-x2|]", 2, 2, _abs2d),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}. Valid tasks: {', '.join(TASKS)}.")
    return TASKS[name]


def input_set_dims(input_set: str) -> tuple[int, int]:
    """(in_dim, out_dim) of the tasks that share ``input_set`` (e.g. ``"x1d"``)."""
    for task in TASKS.values():
        if task.input_set == input_set:
            return task.in_dim, task.out_dim
    raise ValueError(f"Unknown input set {input_set!r}. Valid: {sorted({t.input_set for t in TASKS.values()})}.")


def sample_inputs(in_dim: int, n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` points drawn uniformly from [-1, 1]^in_dim, shape (n, in_dim)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, in_dim, generator=generator, dtype=torch.float64) * 2 - 1).to(dtype)


@dataclass
class TaskData:
    """Training and test inputs and targets of one task."""

    task: Task
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def task_data(name: str, n_train: int, n_test: int, data_seed: int, dtype: torch.dtype = torch.float32) -> TaskData:
    """The training set (seed ``data_seed``) and test set (seed ``data_seed + 1``) of a task."""
    task = get_task(name)
    train_x = sample_inputs(task.in_dim, n_train, data_seed, dtype)
    test_x = sample_inputs(task.in_dim, n_test, data_seed + 1, dtype)
    return TaskData(task, train_x, task.target(train_x), test_x, task.target(test_x))
