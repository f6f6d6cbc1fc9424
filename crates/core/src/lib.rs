//! The value layer over the models: the detector (text -> value vector, per sentence), the
//! translator (instruction -> shift), the scorer (value fit, integrity, facts), the sentence
//! editor and the rewriter with its shield, and the decision on one answer (`enforce`). Depends on `visa-values` and `visa-models`; knows no
//! HTTP (the remote rewriter is a [`rewriter::ChatEndpoint`] the proxy implements).

pub mod config;
pub mod detector;
pub mod edit;
pub mod enforce;
pub mod rewriter;
pub mod score;
pub mod translator;
pub mod value_models;
