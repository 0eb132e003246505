"""GFlowGR fine-tuning pieces (arXiv 2506.16114): flow losses, comprehensive reward, uncertainty weights and
the adaptive trajectory sampler. Pure tensor code, no RecBole import; the trainer combines them."""
from recbole_gflowgr.finetune.gflowgr.losses import detailed_balance, subtrajectory_balance, trajectory_balance
from recbole_gflowgr.finetune.gflowgr.reward import comprehensive_reward
from recbole_gflowgr.finetune.gflowgr.sampler import AdaptiveSampler, SamplerConfigError
from recbole_gflowgr.finetune.gflowgr.weights import uncertainty_weights

__all__ = [
    "trajectory_balance", "detailed_balance", "subtrajectory_balance",
    "comprehensive_reward", "uncertainty_weights", "AdaptiveSampler", "SamplerConfigError",
]
