"""Linear measurement operators for measurement-embedded synthesis (DDMM-Synth Eqs. 2-5).

:mod:`.radon` holds the 2D parallel-beam CT projector ``A`` as an explicit sparse matrix, with its
adjoint, its (regularised) pseudo-inverse ``A+`` and filtered backprojection.
"""

from .radon import (
                    DEFAULT_REG,
                    DENSE_MAX_ROWS,
                    RadonOperator,
                    clear_operator_cache,
                    detector_count,
                    get_operator,
                    projection_angles,
                    simulate_measurements,
                    system_matrix_coo,
)

__all__ = ["RadonOperator", "get_operator", "clear_operator_cache", "simulate_measurements", "projection_angles",
           "detector_count", "system_matrix_coo", "DENSE_MAX_ROWS", "DEFAULT_REG"]
