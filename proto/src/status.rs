//! Metadata of syncfleet gRPC responses.

/// Metadata key of the request id the controller attaches to every response (and logs), so
/// that an operator can quote it and the controller's log line can be found.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id of a failed call, when the controller sent one (`x-request-id`).
pub fn request_id(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_come_from_the_metadata() {
        let mut s = tonic::Status::permission_denied("needs run:operate");
        assert_eq!(request_id(&s), None);
        s.metadata_mut()
            .insert("x-request-id", "01HXYZ".parse().unwrap());
        assert_eq!(request_id(&s).as_deref(), Some("01HXYZ"));
    }
}
