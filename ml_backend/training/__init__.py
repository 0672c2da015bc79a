"""Learning from corrections, pure: training sets, feedback strategies, their losses, the fit loop and the fit core."""
