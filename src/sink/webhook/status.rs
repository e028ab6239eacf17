//! The webhook's statuses: [`decide`] maps a response to a [`Decision`] (the one table of
//! which statuses are delivered, retried, split or rejected), and [`parse_retry_after`]
//! reads `Retry-After`.

use std::time::Duration;

use hyper::StatusCode;

use crate::sink::retry::Decision;

/// The retry policy, in one place.
///
/// - 2xx: delivered.
/// - A status in `retry_on` (default 401, 403, 404, 408, 429, 5xx): retry, honouring
///   `Retry-After`.
/// - 413: split the batch in two.
/// - Any other 4xx or 5xx: reject (bisect to the events at fault, dead-letter them).
/// - Anything else: retry. A 3xx is not followed (the signed body is for the URL the
///   operator configured, and a POST must not silently move): it means `endpoint_url` is
///   out of date, which the operator fixes without losing events. The warning of each
///   failed attempt names the status and the `Location` (see `Poster::post`).
///
/// Transport errors and timeouts are retried too; they never reach this function.
pub(crate) fn decide(
    status: StatusCode,
    retry_after: Option<Duration>,
    retry_on: &[u16],
) -> Decision {
    let code = status.as_u16();
    if status.is_success() {
        Decision::Delivered
    } else if retry_on.contains(&code) {
        Decision::Retry { after: retry_after }
    } else if code == 413 {
        Decision::Split
    } else if status.is_client_error() || status.is_server_error() {
        Decision::Reject
    } else {
        Decision::Retry { after: retry_after }
    }
}

/// `Retry-After` as seconds or as an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::webhook::config::default_retry_on_status;

    #[test]
    fn retry_policy() {
        let retry_on = default_retry_on_status();
        let d = |code: u16| decide(StatusCode::from_u16(code).unwrap(), None, &retry_on);
        assert_eq!(d(200), Decision::Delivered);
        assert_eq!(d(204), Decision::Delivered);
        for code in [401, 403, 404, 408, 429, 500, 502, 503, 504] {
            assert_eq!(d(code), Decision::Retry { after: None }, "{code}");
        }
        assert_eq!(d(413), Decision::Split);
        for code in [400, 405, 409, 410, 422] {
            assert_eq!(d(code), Decision::Reject, "{code}");
        }
        assert_eq!(d(302), Decision::Retry { after: None });
        assert_eq!(
            decide(StatusCode::INTERNAL_SERVER_ERROR, None, &[503]),
            Decision::Reject
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
