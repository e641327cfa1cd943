"""Analytic references of the forward problem for the tests: the Mie series of a homogeneous disk, now the
package's own (`bcrdist.physics.mie`, independent of the solver; tests/test_discretisation.py checks it
against the optical theorem and reciprocity)."""

from bcrdist.physics.mie import mie_far_field

__all__ = ["mie_far_field"]
