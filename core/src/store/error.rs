//! What a store call can fail with, for either store.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("collection {0:?} does not exist")]
    NoSuchCollection(String),
    #[error("collection {name:?} already exists with another definition: {existing}")]
    Conflict { name: String, existing: String },
    #[error("invalid collection name {0:?}: use 1 to 64 letters, digits, '-' or '_'")]
    BadName(String),
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// The request was prepared for another definition of the collection (it was deleted and
    /// recreated with other sizes while the request ran).
    #[error("collection {name:?} was redefined while the request ran: {message}; retry")]
    Redefined { name: String, message: String },
    #[error("storage error: {0}")]
    Storage(String),
    /// A collection option this store cannot honour, or a bad value for one.
    #[error("{message}")]
    Unsupported { option: String, message: String },
    /// The store cannot be reached now (a Qdrant server down or restarting). A write may or
    /// may not have been applied; sending it again is safe (documents replace by id).
    #[error("the vector store is unavailable: {0}; retry shortly")]
    Unavailable(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
