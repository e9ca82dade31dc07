//! Typed errors: one variant for each way a packet can be wrong.

/// A malformed or over-limit uwsgi packet.
///
/// "Need more bytes" is never an error: the parsers return `Ok(None)` for that.
/// Every variant is `Copy + PartialEq`, so tests can `assert_eq!` on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The header announces a payload over the configured limit (uWSGI's `--buffer-size`).
    #[error(
        "uwsgi packet of {size} bytes is over the limit of {limit} bytes \
         (raise --buffer-size; the protocol allows up to 65535)"
    )]
    BlockTooLarge {
        /// The `datasize` the header announced.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A var has a zero-length key (uWSGI: "uwsgi key cannot be null").
    #[error("uwsgi var at offset {offset} of the vars block has an empty key")]
    EmptyKey {
        /// Offset of the key's length field inside the vars block.
        offset: usize,
    },
    /// The block ends one byte into a key's 2-byte length (trailing garbage).
    #[error("uwsgi vars block ends inside a key length at offset {offset}")]
    TruncatedKeySize {
        /// Offset of the incomplete length field inside the vars block.
        offset: usize,
    },
    /// A key's length runs past the end of the block.
    #[error("uwsgi key at offset {offset} claims {len} bytes, past the end of the vars block")]
    KeyPastEnd {
        /// Offset of the key's length field inside the vars block.
        offset: usize,
        /// The length the key claims.
        len: usize,
    },
    /// The block ends before (or inside) a value's 2-byte length.
    #[error("uwsgi vars block ends before the value length at offset {offset}")]
    TruncatedValueSize {
        /// Offset where the value's length field should be.
        offset: usize,
    },
    /// A value's length runs past the end of the block.
    #[error("uwsgi value at offset {offset} claims {len} bytes, past the end of the vars block")]
    ValuePastEnd {
        /// Offset of the value's length field inside the vars block.
        offset: usize,
        /// The length the value claims.
        len: usize,
    },
    /// The block ends inside an array item's 2-byte length (uwsgi arrays, as used by RPC).
    #[error("uwsgi array ends inside an item length at offset {offset}")]
    TruncatedItemSize {
        /// Offset of the incomplete length field.
        offset: usize,
    },
    /// An array item's length runs past the end of the payload.
    #[error("uwsgi array item at offset {offset} claims {len} bytes, past the end of the payload")]
    ItemPastEnd {
        /// Offset of the item's length field.
        offset: usize,
        /// The length the item claims.
        len: usize,
    },
    /// More vars than the configured limit (uWSGI's `--max-vars`).
    #[error("more than {limit} uwsgi vars in one packet (raise the vars limit)")]
    TooManyVars {
        /// The configured limit.
        limit: usize,
    },
    /// `CONTENT_LENGTH` is neither empty nor a decimal number that fits in 64 bits.
    #[error("CONTENT_LENGTH is not a decimal number")]
    InvalidContentLength,
    /// `CONTENT_LENGTH` is over the configured body limit (uWSGI's `--limit-post`).
    #[error("request body of {length} bytes is over the limit of {limit} bytes (--limit-post)")]
    BodyTooLarge {
        /// The announced body length.
        length: u64,
        /// The configured limit.
        limit: u64,
    },
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// uWSGI rejects a var with an empty key, so the encoder refuses to write one.
    #[error("uwsgi var keys cannot be empty")]
    EmptyKey,
    /// A key longer than a u16 length can say.
    #[error("uwsgi key of {len} bytes is over 65535 bytes")]
    KeyTooLong {
        /// The key's length.
        len: usize,
    },
    /// A value (or array item) longer than a u16 length can say.
    #[error("uwsgi value of {len} bytes is over 65535 bytes")]
    ValueTooLong {
        /// The value's length.
        len: usize,
    },
    /// The encoded block would be over the limit (65535, or a lower configured one).
    #[error(
        "uwsgi vars block of {size} bytes is over the limit of {limit} bytes \
         (the protocol allows up to 65535)"
    )]
    BlockTooLarge {
        /// The size the block would have (or has reached so far).
        size: usize,
        /// The limit in force.
        limit: usize,
    },
}
