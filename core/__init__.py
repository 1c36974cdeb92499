"""gradsal.core: the framework-agnostic saliency engine (NumPy only).

Attribution methods, post-processing and the gradient checker, all built on the small
:class:`GradientBackend` protocol. Nothing here imports a deep-learning framework.
"""

from .attribution import (
    deconvnet,
    grad_cam,
    gradient_x_input,
    guided_backprop,
    integrated_gradients,
    integration_rule,
    smoothgrad,
    vanilla_gradient,
)
from .batching import get_memory_budget, memory_budget, set_memory_budget
from .errors import (
    BackendError,
    GradsalError,
    InputError,
    InputTypeError,
    MissingCapabilityError,
    MissingDependencyError,
    ModelError,
    TargetError,
    UnsupportedModelError,
    UnsupportedOperatorError,
)
from .gradcheck import FamilyResult, GradientCheckReport, check_gradients
from .postprocess import FeatureScore, rank_features, to_saliency_map
from .protocol import (
    GradientBackend,
    ReluRule,
    SupportsFloat64,
    SupportsJVP,
    SupportsLayers,
    SupportsRandomization,
    SupportsReluRule,
)
from .registry import BackendPlugin, as_backend, available_backends, register_backend, unregister_backend
from .targets import ProbabilityOutputWarning

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendPlugin",
    "FamilyResult",
    "FeatureScore",
    "GradientBackend",
    "GradientCheckReport",
    "GradsalError",
    "InputError",
    "InputTypeError",
    "MissingCapabilityError",
    "MissingDependencyError",
    "ModelError",
    "ProbabilityOutputWarning",
    "ReluRule",
    "SupportsFloat64",
    "SupportsJVP",
    "SupportsLayers",
    "SupportsRandomization",
    "SupportsReluRule",
    "TargetError",
    "UnsupportedModelError",
    "UnsupportedOperatorError",
    "__version__",
    "as_backend",
    "available_backends",
    "check_gradients",
    "deconvnet",
    "get_memory_budget",
    "grad_cam",
    "gradient_x_input",
    "guided_backprop",
    "integrated_gradients",
    "integration_rule",
    "memory_budget",
    "rank_features",
    "register_backend",
    "set_memory_budget",
    "smoothgrad",
    "to_saliency_map",
    "unregister_backend",
    "vanilla_gradient",
]

# sanity checks and faithfulness metrics
from .faithfulness import PerturbationCurve, deletion_curve, insertion_curve, plot_curves
from .sanity import (
    MethodComparison,
    RandomizationResult,
    compare_methods,
    completeness,
    input_invariance,
    model_randomization_test,
    spearman_correlation,
    ssim,
)
from .tokens import TOKEN_REDUCTIONS, token_scores  # models that take integers: one score per token

__all__ += [
    "MethodComparison", "PerturbationCurve", "RandomizationResult", "compare_methods", "completeness",
    "deletion_curve", "input_invariance", "insertion_curve", "model_randomization_test", "plot_curves",
    "spearman_correlation", "ssim",
]
__all__ += ["TOKEN_REDUCTIONS", "token_scores"]

# localisation metrics: saliency inside a region (object mask or box) and on a forbidden one
from .localisation import (  # noqa: E402 (kept apart from the blocks above for easy merges)
    box_mask,
    energy_pointing_game,
    forbidden_share,
    localisation_metrics,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)

__all__ += [
    "box_mask", "energy_pointing_game", "forbidden_share", "localisation_metrics", "pointing_game",
    "relevance_mass_accuracy", "relevance_rank_accuracy",
]
