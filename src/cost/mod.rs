//! Money, prices, budget periods and run costs: exact decimal arithmetic, no
//! floats, no I/O.
