//! The two ways an export request travels — gRPC (`LogsService/Export`) and HTTP/protobuf
//! (`POST /v1/logs`) — and how their answers are classified under the OTLP specification:
//! gRPC `UNAVAILABLE`, `CANCELLED`, `DEADLINE_EXCEEDED`, `ABORTED`, `OUT_OF_RANGE`,
//! `DATA_LOSS` and `RESOURCE_EXHAUSTED` with a `RetryInfo`, HTTP 429, 502, 503 and 504 and no
//! answer at all are retried (after the server's `RetryInfo` / `Retry-After`); anything else is
//! permanent.

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::codec::{DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

use crate::component::Invalid;
use crate::stages::send::{self, Attempt};

/// How one export ended, before the retry rules.
#[derive(Debug)]
pub enum Exported {
    /// The server took the request; it may have refused `rejected` of its records.
    Accepted {
        rejected: i64,
        message: String,
    },
    Attempt(Attempt),
}

/// How the request goes out.
pub enum Transport {
    Grpc {
        client: tonic::client::Grpc<Channel>,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: reqwest::Url,
    },
}

/// What a transport is made of (from the stage's config).
pub struct Options<'a> {
    pub endpoint: &'a str,
    pub http: bool,
    pub gzip: bool,
    pub timeout: Duration,
    pub headers: &'a std::collections::BTreeMap<String, String>,
    pub ca_file: Option<&'a std::path::Path>,
    pub insecure_skip_verify: bool,
    pub stage: &'a str,
}

/// The endpoint as a URL: `http(s)://host:port`, with `/v1/logs` added for HTTP unless it
/// ends with it.
pub fn endpoint_url(endpoint: &str, http: bool) -> Result<reqwest::Url, Invalid> {
    send::http_url("endpoint", endpoint, http.then_some("/v1/logs"))
}

/// gRPC request metadata of `headers` (names lowercase, as gRPC wants them).
pub fn metadata(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<MetadataMap, Invalid> {
    let mut m = MetadataMap::new();
    for (k, v) in headers {
        let field = format!("headers.{k}");
        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| Invalid::new(&field, format!("`{k}` is not a gRPC metadata name")))?;
        let value = MetadataValue::try_from(v.as_str())
            .map_err(|_| Invalid::new(&field, "the value is not a valid header value"))?;
        m.insert(key, value);
    }
    Ok(m)
}

impl Transport {
    /// Made without connecting (the first export connects).
    pub fn new(o: &Options<'_>) -> Result<Transport, Invalid> {
        let url = endpoint_url(o.endpoint, o.http)?;
        if o.http {
            let client = send::client(&send::ClientOptions {
                timeout: o.timeout,
                headers: o.headers,
                ca_file: o.ca_file,
                insecure_skip_verify: o.insecure_skip_verify,
                stage: o.stage,
                what: "otlp receiver",
            })?;
            return Ok(Transport::Http { client, url });
        }
        let endpoint = Endpoint::from_shared(url.as_str().trim_end_matches('/').to_string())
            .map_err(|e| Invalid::new("endpoint", format!("not a gRPC endpoint: {e}")))?
            .timeout(o.timeout)
            .connect_timeout(o.timeout)
            .tcp_nodelay(true);
        let channel = if url.scheme() == "https" {
            let tls = super::tls::config(o.ca_file, o.insecure_skip_verify, o.stage)?;
            endpoint.connect_with_connector_lazy(super::tls::Connector::new(Arc::new(tls)))
        } else {
            endpoint.connect_lazy()
        };
        let mut client = tonic::client::Grpc::new(channel)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(16 << 20);
        if o.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(Transport::Grpc {
            client,
            metadata: metadata(o.headers)?,
        })
    }

    /// Sends one request: `body` is its protobuf encoding (for HTTP gzipped when `gzip`; for
    /// gRPC plain: the channel compresses it). Encoded once, sent as is on every attempt.
    /// Returns the outcome, the metric class of the request and its duration.
    pub async fn export(
        &self,
        body: &bytes::Bytes,
        gzip: bool,
        timeout: Duration,
    ) -> (Exported, &'static str, f64) {
        let started = Instant::now();
        match self {
            Transport::Grpc { client, metadata } => {
                let mut req = tonic::Request::new(body.clone());
                *req.metadata_mut() = metadata.clone();
                let mut client = client.clone();
                let r = match client.ready().await {
                    Ok(()) => {
                        client
                            .unary(req, http::uri::PathAndQuery::from_static(EXPORT), Encoded)
                            .await
                    }
                    Err(e) => Err(tonic::Status::from_error(Box::new(e))),
                };
                let secs = started.elapsed().as_secs_f64();
                match r {
                    Ok(resp) => {
                        let p = resp.into_inner().partial_success.unwrap_or_default();
                        (
                            Exported::Accepted {
                                rejected: p.rejected_log_records,
                                message: p.error_message,
                            },
                            "2xx",
                            secs,
                        )
                    }
                    Err(status) => {
                        let class = grpc_class(&status);
                        (Exported::Attempt(grpc_refusal(&status)), class, secs)
                    }
                }
            }
            Transport::Http { client, url } => {
                let mut r = client
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
                if gzip {
                    r = r.header(reqwest::header::CONTENT_ENCODING, "gzip");
                }
                let r = r.body(body.clone()).send().await;
                let class = send::status_class(&r);
                let out = match r {
                    Ok(resp) => http_answer(resp).await,
                    Err(e) => Exported::Attempt(
                        send::http_answer(Err(e), timeout, |e| {
                            crate::types::error_chain(&e.without_url())
                        })
                        .await,
                    ),
                };
                (out, class, started.elapsed().as_secs_f64())
            }
        }
    }
}

/// The gRPC method of an export.
const EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// The codec of an export whose request is encoded already: its bytes go out as they are (no
/// copy of the message per attempt); the answer is decoded as usual.
#[derive(Clone, Copy)]
struct Encoded;

impl tonic::codec::Codec for Encoded {
    type Encode = bytes::Bytes;
    type Decode = ExportLogsServiceResponse;
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Encoded {
        Encoded
    }

    fn decoder(&mut self) -> Encoded {
        Encoded
    }
}

impl Encoder for Encoded {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: bytes::Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Encoded {
    type Item = ExportLogsServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportLogsServiceResponse>, tonic::Status> {
        ExportLogsServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("cannot decode the answer: {e}")))
    }
}

/// The metric class of a gRPC error, by gRPC's own mapping onto HTTP.
fn grpc_class(s: &tonic::Status) -> &'static str {
    match s.code() {
        Code::Ok => "2xx",
        Code::DeadlineExceeded => "timeout",
        Code::Unavailable if s.source().is_some() => "connection_error",
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::ResourceExhausted
        | Code::Cancelled
        | Code::Aborted => "4xx",
        _ => "5xx",
    }
}

/// A gRPC error under OTLP's rules.
pub fn grpc_refusal(s: &tonic::Status) -> Attempt {
    let retry_info = s.get_details_retry_info();
    let after = retry_info
        .as_ref()
        .and_then(|r| r.retry_delay)
        .filter(|d| !d.is_zero());
    let why = match s.source() {
        Some(cause) => format!(
            "gRPC {:?}: {} ({})",
            s.code(),
            s.message(),
            crate::types::error_chain(cause)
        ),
        None => format!("gRPC {:?}: {}", s.code(), s.message()),
    };
    let retryable = match s.code() {
        Code::Unavailable
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => true,
        // Only when the server says when to come back (the OTLP specification).
        Code::ResourceExhausted => retry_info.is_some(),
        _ => false,
    };
    if retryable {
        Attempt::Retry { why, after }
    } else {
        Attempt::Permanent(why)
    }
}

/// An HTTP answer under OTLP's rules: 2xx accepted (its body may report a partial success);
/// 429, 502, 503, 504 retried (after `Retry-After`); any other permanent, with the message of
/// the `google.rpc.Status` body when there is one.
async fn http_answer(resp: reqwest::Response) -> Exported {
    let status = resp.status();
    let after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(send::retry_after);
    let protobuf = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    let body = resp.bytes().await.unwrap_or_default();
    if status.is_success() {
        let p = if protobuf {
            ExportLogsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .unwrap_or_default()
        } else {
            // A JSON answer (some gateways) or none: no partial success to read.
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let p = v.get("partialSuccess")?;
                    Some(
                        opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess {
                            rejected_log_records: p
                                .get("rejectedLogRecords")
                                .and_then(|n| {
                                    n.as_str().and_then(|s| s.parse().ok()).or(n.as_i64())
                                })
                                .unwrap_or(0),
                            error_message: p
                                .get("errorMessage")
                                .and_then(|m| m.as_str())
                                .unwrap_or_default()
                                .to_string(),
                        },
                    )
                })
                .unwrap_or_default()
        };
        return Exported::Accepted {
            rejected: p.rejected_log_records,
            message: p.error_message,
        };
    }
    let message = if protobuf {
        tonic_types::pb::Status::decode(body.clone())
            .map(|s| s.message)
            .unwrap_or_default()
    } else {
        String::from_utf8_lossy(&body)
            .trim()
            .chars()
            .take(200)
            .collect()
    };
    let why = format!("HTTP {status}: {message}");
    match status.as_u16() {
        429 | 502 | 503 | 504 => Exported::Attempt(Attempt::Retry { why, after }),
        _ => Exported::Attempt(Attempt::Permanent(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_follow_the_otlp_specification() {
        let retried = |s: tonic::Status| matches!(grpc_refusal(&s), Attempt::Retry { .. });
        for c in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert!(retried(tonic::Status::new(c, "x")), "{c:?}");
        }
        for c in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Internal,
            Code::Unknown,
            Code::Unimplemented,
        ] {
            assert!(!retried(tonic::Status::new(c, "x")), "{c:?}");
        }
        // RESOURCE_EXHAUSTED only with a RetryInfo, whose delay is honoured.
        assert!(!retried(tonic::Status::new(Code::ResourceExhausted, "x")));
        let with = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        match grpc_refusal(&with) {
            Attempt::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(3))),
            a => panic!("{a:?}"),
        }
    }
}
