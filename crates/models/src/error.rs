//! The error the model-side layers return (models, detector, translator, scorer, editor,
//! rewriter): what went wrong in words a caller can act on, without HTTP; the proxy maps each
//! kind to its status and OpenAI error body in one place (its `error.rs`).

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is not allowed (too long, empty, unknown value name...).
    InvalidRequest,
    /// Well-formed input whose content cannot be processed.
    Unprocessable,
    /// A bounded queue is full: try again later.
    Overloaded,
    /// The model has stopped or is not loaded.
    Unavailable,
    /// Another server (a remote rewriter) failed or answered something unusable.
    BadGateway,
    /// Another server did not answer in time.
    Timeout,
    /// A bug or a model failure.
    Internal,
}

#[derive(Debug, Clone)]
pub struct ModelError {
    pub kind: ErrorKind,
    pub message: String,
    /// The request field the error is about, when there is one.
    pub param: Option<String>,
    /// A stable machine-readable reason for the client (`upstream_answer_too_large`), when
    /// the kind's own is not precise enough.
    pub code: Option<&'static str>,
}

impl ModelError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadGateway, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ModelError {}
