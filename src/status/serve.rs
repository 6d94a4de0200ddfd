//! One status request, on the endpoint's thread: ask the front for a
//! report (waiting at most [`ANSWER_TIMEOUT`]), fill in the rates, keep
//! the rows the query asks for, render HTML or JSON. The HTTP side is in
//! `metrics::http`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::rates::Rates;
use super::view::View;
use super::{Asker, Report};

/// How long a request waits for the front's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The status routes' state: how to reach the front, and the rate samples.
pub struct Pages {
    asker: Asker,
    rates: Mutex<Rates>,
}

/// Why a status request got no page: an HTTP status and a line of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub text: String,
}

/// The formats a status request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Json,
}

impl Pages {
    pub fn new(asker: Asker) -> Pages {
        Pages {
            asker,
            rates: Mutex::new(Rates::default()),
        }
    }

    /// The page (HTML or JSON) for `query`.
    pub async fn get(&self, query: &str, format: Format) -> Result<String, Refusal> {
        let view = View::parse(query, format == Format::Html)
            .map_err(|text| Refusal { code: 400, text })?;
        let mut report = self.report().await?;
        {
            let mut rates = match self.rates.lock() {
                Ok(r) => r,
                Err(poisoned) => poisoned.into_inner(),
            };
            rates.apply(&mut report, Instant::now());
        }
        view.apply(&mut report);
        Ok(match format {
            Format::Html => super::html::page(&report, &view),
            Format::Json => serde_json::to_string(&report).map_err(|e| Refusal {
                code: 500,
                text: format!("cannot encode the report: {e}"),
            })?,
        })
    }

    async fn report(&self) -> Result<Report, Refusal> {
        let unavailable = |text: &str| Refusal {
            code: 503,
            text: text.to_string(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.asker.try_send(tx).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => {
                unavailable("busy: too many status requests at once; try again")
            }
            tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                unavailable("the front is not answering (stopping or handed over)")
            }
        })?;
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(_)) => Err(unavailable(
                "the front is not answering (stopping or handed over)",
            )),
            Err(_) => Err(unavailable(
                "the front did not answer within 5 s (busy, or frozen for an upgrade)",
            )),
        }
    }
}
