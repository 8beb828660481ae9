from .scheduling_linear_flow_match_euler import LinearFlowMatchEulerScheduler

__all__ = ["LinearFlowMatchEulerScheduler"]
