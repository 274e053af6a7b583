"""Action-chunk critics ``Q(features, chunk) -> (K, B)`` values."""

from gaflow.critic.models import EnsembleMLPCritic, evaluate_critic

__all__ = ["EnsembleMLPCritic", "evaluate_critic"]
