"""The Dirac-GAN of Mescheder, Geiger and Nowozin (2018), theory.md section 6: why unregularised GAN
training does not converge and why R1 makes it converge. NumPy only; no cluster, no torch.

Critic C(x) = psi0 x + psi1, data delta_0, generator delta_theta, f(t) = log sigmoid(t):

    L(psi, theta) = f(psi1) + f(-psi0 theta - psi1)
    v = (dL/dpsi0 - gamma psi0, dL/dpsi1, -dL/dtheta)
      = (-theta f'(-psi0 theta - psi1) - gamma psi0,  f'(psi1) - f'(-psi0 theta - psi1),
         psi0 f'(-psi0 theta - psi1))

with f'(t) = sigmoid(-t) and R1 = psi0^2 weighted by gamma / 2. At the equilibrium (0, 0, 0):
J = [[-gamma, 0, -1/2], [0, -1/2, 0], [1/2, 0, 0]], eigenvalues -1/2 and -gamma/2 +- sqrt(gamma^2/4 - 1/4).

    simclr dirac-gan --gamma 0.3 --out dirac_gan.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from trainer.plots import pyplot

State = np.ndarray  # (psi0, psi1, theta)


def _f_prime(t: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(t))  # sigmoid(-t)


def vector_field(state: State, gamma: float = 0.0) -> State:
    """The gradient ascent (critic) / descent (generator) direction at ``state``."""
    psi0, psi1, theta = state
    fake = _f_prime(-psi0 * theta - psi1)
    return np.array(
        [-theta * fake - gamma * psi0, _f_prime(psi1) - fake, psi0 * fake], dtype=np.float64
    )


def equilibrium_jacobian(gamma: float = 0.0) -> np.ndarray:
    """The closed-form Jacobian of ``vector_field`` at (0, 0, 0)."""
    return np.array([[-gamma, 0.0, -0.5], [0.0, -0.5, 0.0], [0.5, 0.0, 0.0]])


def numerical_jacobian(state: State, gamma: float = 0.0, step: float = 1e-6) -> np.ndarray:
    """Central differences of ``vector_field``: checks the closed form."""
    columns = []
    for i in range(3):
        offset = np.zeros(3)
        offset[i] = step
        columns.append(
            (vector_field(state + offset, gamma) - vector_field(state - offset, gamma)) / (2 * step)
        )
    return np.stack(columns, axis=1)


def equilibrium_eigenvalues(gamma: float = 0.0) -> np.ndarray:
    """Eigenvalues at the equilibrium, sorted by real then imaginary part."""
    values = np.linalg.eigvals(equilibrium_jacobian(gamma))
    return values[np.lexsort((values.imag, values.real))]


def trajectory(
    gamma: float = 0.0,
    step_size: float = 0.1,
    steps: int = 2000,
    mode: Literal["simultaneous", "alternating"] = "alternating",
    start: tuple[float, float, float] = (1.0, 0.0, 1.0),
) -> np.ndarray:
    """The states of ``steps`` gradient steps, (steps + 1, 3). Simultaneous: every coordinate from
    the current field. Alternating: the critic (psi) first, then the generator at the new critic."""
    if mode not in ("simultaneous", "alternating"):
        raise ValueError(f"mode must be 'simultaneous' or 'alternating', got {mode!r}")
    states = np.empty((steps + 1, 3))
    state = np.array(start, dtype=np.float64)
    states[0] = state
    for i in range(steps):
        if mode == "simultaneous":
            state = state + step_size * vector_field(state, gamma)
        else:
            state = state.copy()
            state[:2] += step_size * vector_field(state, gamma)[:2]
            state[2] += step_size * vector_field(state, gamma)[2]
        states[i + 1] = state
    return states


def plot(
    path: str | Path, gamma: float = 0.3, step_size: float = 0.1, steps: int = 2000
) -> dict[str, object]:
    """Save the (theta, psi0) plane with the vector field and the four trajectories (simultaneous
    and alternating, without and with R1) to ``path``; return the eigenvalues and final distances."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
    grid = np.linspace(-2, 2, 17)
    summary: dict[str, object] = {}
    for axis, g in zip(axes, (0.0, gamma), strict=True):
        theta, psi0 = np.meshgrid(grid, grid)
        field = np.array(
            [[vector_field(np.array([p, 0.0, t]), g) for t, p in zip(r_t, r_p, strict=True)]
             for r_t, r_p in zip(theta, psi0, strict=True)]
        )  # fmt: skip
        axis.quiver(theta, psi0, field[..., 2], field[..., 0], color="0.7")
        for mode, colour in (("simultaneous", "tab:red"), ("alternating", "tab:blue")):
            states = trajectory(g, step_size, steps, mode)
            states = states[np.all(np.abs(states) < 10, axis=1)]
            axis.plot(states[:, 2], states[:, 0], color=colour, lw=1, label=mode)
            summary[f"final_distance_{mode}_gamma_{g:g}"] = float(np.linalg.norm(states[-1]))
        axis.plot([0], [0], "k*", ms=12)
        eigen = equilibrium_eigenvalues(g)
        summary[f"eigenvalues_gamma_{g:g}"] = [
            complex(round(v.real, 6), round(v.imag, 6)) for v in eigen
        ]
        axis.set(
            xlim=(-2, 2), ylim=(-2, 2), xlabel="generator theta", ylabel="critic psi0",
            title=f"gamma = {g:g}: eigenvalues " + ", ".join(f"{v:.2g}" for v in eigen),
        )  # fmt: skip
        axis.legend(loc="upper right")
    figure.suptitle(f"Dirac-GAN, step size {step_size}, {steps} steps, start (1, 0, 1)")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return summary
