//! Offline admission: a JSON file with a resource model and a list of requests, decided in
//! order against an initially idle host. This is what the CLI's `admission check FILE`
//! runs; the format is described in `docs/admission.md`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    Admission, AdmitError, Admitted, ChannelRequest, ModelError, Rejection, ResourceModel,
};

/// The input file: `{ "model": {..}, "requests": [{..}, ..] }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckInput {
    /// The host. Missing fields take their defaults.
    #[serde(default)]
    pub model: ResourceModel,
    /// Requests, admitted in order (each one sees the reservations of those before it).
    pub requests: Vec<ChannelRequest>,
}

/// The decision on one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Decision {
    /// Admitted and reserved.
    Admitted(Admitted),
    /// Malformed request.
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Valid but refused.
    Rejected(Rejection),
}

impl From<Result<Admitted, AdmitError>> for Decision {
    fn from(r: Result<Admitted, AdmitError>) -> Self {
        match r {
            Ok(a) => Self::Admitted(a),
            Err(AdmitError::Invalid(e)) => Self::Invalid {
                field: e.field().to_owned(),
                message: e.to_string(),
            },
            Err(AdmitError::Rejected(r)) => Self::Rejected(*r),
        }
    }
}

/// Why an input file could not be checked at all.
#[derive(Debug, Error)]
pub enum CheckFileError {
    /// Not valid JSON for [`CheckInput`].
    #[error("admission input: {0}")]
    Parse(#[from] serde_json::Error),
    /// The model is unusable.
    #[error("admission input: model.{0}")]
    Model(#[from] ModelError),
}

/// Decides every request in order; one [`Decision`] per request.
pub fn run(input: &CheckInput) -> Result<Vec<Decision>, ModelError> {
    // The file describes a sending host: its best-effort runs are handler runs at its costs.
    input.model.validate_best_effort_run()?;
    let mut adm = Admission::new(input.model.clone())?;
    Ok(input
        .requests
        .iter()
        .map(|r| Decision::from(adm.admit(r)))
        .collect())
}

/// Parses the JSON input and decides it.
pub fn run_json(text: &str) -> Result<Vec<Decision>, CheckFileError> {
    let input: CheckInput = serde_json::from_str(text)?;
    Ok(run(&input)?)
}
