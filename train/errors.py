"""What a run raises when it cannot start or go on; the command line shows the message as one line."""


class TrainingError(Exception):
    """A run that cannot start or continue (exit status 1)."""

    exit_code = 1


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite (exit status 2: the recipe, not the setup, is at fault)."""

    exit_code = 2


class RunInterrupted(TrainingError):
    """Stopped by a signal at a step boundary (exit status 128 + the signal, as a shell reports it)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
