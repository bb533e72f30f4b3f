//! Rates: which channel a receiver takes (step down / step up), when receivers
//! report, how a server channel adapts its rate to reports, and how a unicast
//! stream adapts to NAKs. All time is passed in; `PROTOCOL.md` §7 is the spec.

mod adapt;
mod membership;
mod reports;
mod selection;
mod unicast;

pub use adapt::*;
pub use membership::*;
pub use reports::*;
pub use selection::*;
pub use unicast::*;

#[cfg(test)]
mod tests;
