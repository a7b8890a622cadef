//! The report window on ingest: every route that stores a report (one at a time
//! or in bulk) refuses, before anything else is done with it, a report whose id
//! is older than the window or too far in the future (see [`crate::report_id`]).
//! The server's own clock ([`AppState::clock`]) decides, so tests drive it.

use crate::report_id::OutsideWindow;
use crate::server::AppState;
use crate::server::error::ApiError;

/// Whether the report `report_id` may be stored now: `report_too_old` or
/// `report_from_future` (400) if its time is outside the server's window.
pub(crate) fn check_report_time(state: &AppState, report_id: &[u8; 16]) -> Result<(), ApiError> {
    let window = state.config.endpoints.report_window();
    match window.check(report_id, state.clock.now()) {
        Ok(()) => Ok(()),
        Err(OutsideWindow::TooOld { age }) => Err(ApiError::bad_request(
            "report_too_old",
            format!(
                "the report id was made {} s ago, longer than this server's report window \
                 ({} s, endpoints.report_retention_secs): make a new report (its id starts \
                 with the time, as UUIDv7)",
                age.as_secs(),
                window.max_age.as_secs()
            ),
        )),
        Err(OutsideWindow::FromFuture { ahead }) => Err(ApiError::bad_request(
            "report_from_future",
            format!(
                "the report id's time is {} s ahead of this server's clock (at most {} s \
                 allowed, endpoints.report_max_future_skew_secs): check the client's clock",
                ahead.as_secs(),
                window.max_future_skew.as_secs()
            ),
        )),
    }
}
