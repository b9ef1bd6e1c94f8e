//! The body of every answer the gateway gives: a backend's, relayed as it
//! arrives, or one the gateway made itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::response::IntoResponse;
use bytes::Bytes;
use http::Response;
use hyper::body::{Frame, SizeHint};
use rewards_kit::Problem;

use crate::upstream::ResponseBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum GatewayBody {
    Upstream(ResponseBody),
    Local(axum::body::Body),
}

/// A problem+json answer made by the gateway.
pub fn local(problem: Problem) -> Response<GatewayBody> {
    problem.into_response().map(GatewayBody::Local)
}

impl hyper::body::Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Local(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(body) => body.is_end_stream(),
            Self::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(body) => body.size_hint(),
            Self::Local(body) => body.size_hint(),
        }
    }
}
