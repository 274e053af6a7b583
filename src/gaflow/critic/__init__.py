"""Action-chunk critics ``Q(features, chunk) -> (K, B)`` values."""

from gaflow.critic.models import EnsembleMLPCritic, TransformerCritic, evaluate_critic

__all__ = ["EnsembleMLPCritic", "TransformerCritic", "evaluate_critic"]
