//! Who may trigger a run and whether the budget allows it: pure decisions over
//! plain data, no I/O.
