//! What an operator runs beside the agent: health probes, metrics with
//! their alert rules and dashboard, `migrctl explain`.

mod coexistence;
mod explain;
mod health;
mod logs;
