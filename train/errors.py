"""What a run raises when it cannot start or go on; the command line shows the message as one line."""


class TrainingError(Exception):
    """A run that cannot start or continue."""


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite (exit status 2: the recipe, not the setup, is at fault)."""
