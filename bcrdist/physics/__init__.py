"""Forward scattering physics: the Lippmann–Schwinger solver, scatterer families and the data generator.

`far_field(eta, k, incident_angles, receiver_angles, *, box=1.0, tol=1e-10)` → complex128
(n_inc, n_rec) of u_∞(x̂; d) = e^{iπ/4}/√(8πk) · k² ∫ e^{−ik x̂·y} η(y) u(y; d) dy for
Δu + k²(1 + η)u = 0, u = e^{ik d·x} + u_s; `born_far_field` the same with u replaced by the incident wave.
See docs/physics.md.
"""

__all__ = ["ConvergenceError", "ScatteringSolver", "born_far_field", "far_field"]


def __getattr__(name: str):
    """The solver's names, imported when first used: importing a module of this package (the layout, which
    every data reader needs) does not import the solver's SciPy (scipy.fft, scipy.special: about 0.3 s)."""
    if name in __all__:
        from bcrdist.physics import solver
        return getattr(solver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
