"""Forward scattering physics: the Lippmann–Schwinger solver, scatterer families and the data generator.

`far_field(eta, k, incident_angles, receiver_angles, *, box=1.0, tol=1e-10)` → complex128
(n_inc, n_rec) of u_∞(x̂; d) = e^{iπ/4}/√(8πk) · k² ∫ e^{−ik x̂·y} η(y) u(y; d) dy for
Δu + k²(1 + η)u = 0, u = e^{ik d·x} + u_s; `born_far_field` the same with u replaced by the incident wave.
See docs/physics.md.
"""

from bcrdist.physics.solver import ConvergenceError, ScatteringSolver, born_far_field, far_field

__all__ = ["ConvergenceError", "ScatteringSolver", "born_far_field", "far_field"]
