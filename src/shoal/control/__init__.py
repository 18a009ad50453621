"""Control loop and reconcilers: load -> decide (policy) -> fenced apply, through ports."""
