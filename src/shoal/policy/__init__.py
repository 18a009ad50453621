"""Pure scheduling decisions over immutable snapshots: no clock, no I/O."""
