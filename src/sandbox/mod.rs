//! Builders of a run's child objects (Secret, NetworkPolicy, Pod) and of a
//! policy's namespace quota: pure functions from (policy, run) to objects.
