//! The per-request HTTP context: translates proxy-wasm callbacks into core calls and the
//! core's outcome back into a destination header or a local reply.

use std::cell::RefCell;
use std::rc::Rc;

use kvroute_core::circuit::UPSTREAM_TIMING_HEADER;
use kvroute_core::{
    ApiRoute, LocalReply, Outcome, RequestKind, ResponseOrigin, ResponseReport, Ticket,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use crate::metrics::Metric;
use crate::vm::Vm;

/// Sets (or with `None` removes) a request header; a host refusal is logged, never a panic.
fn set_request_header(name: &str, value: Option<&str>) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value) {
        log::warn!("kvroute: request header {name} not set: {status:?}");
    }
}

/// A routed request's in-flight proof and the address it is counted on.
struct InFlight {
    ticket: Ticket,
    address: String,
}

/// One HTTP stream.
pub struct Filter {
    vm: Option<Rc<RefCell<Vm>>>,
    /// Set while the body of an inference request is being read.
    pending: Option<ApiRoute>,
    session: Option<String>,
    in_flight: Option<InFlight>,
}

impl Filter {
    /// A stream over the VM state; with `None` (never configured) requests pass untouched.
    pub fn new(vm: Option<Rc<RefCell<Vm>>>) -> Filter {
        Filter {
            vm,
            pending: None,
            session: None,
            in_flight: None,
        }
    }

    /// Acts on the core's outcome.
    fn act(&mut self, vm: &Rc<RefCell<Vm>>, outcome: Outcome) -> Action {
        match outcome {
            Outcome::Forward(forward) => {
                let state = vm.borrow();
                let header = state.gateway.config().destination_header.clone();
                let address = forward
                    .routed
                    .endpoints
                    .first()
                    .cloned()
                    .unwrap_or_default();
                state.acquired(&address);
                drop(state);
                self.in_flight = Some(InFlight {
                    ticket: forward.routed.ticket,
                    address,
                });
                set_request_header(&header, Some(&forward.destination));
                Action::Continue
            }
            Outcome::Reply(reply) => self.reply(vm, &reply),
        }
    }

    fn reply(&self, vm: &Rc<RefCell<Vm>>, reply: &LocalReply) -> Action {
        vm.borrow().metrics.add(Metric::LocalReplies, 1);
        let retry = reply.retry_after_secs.map(|s| s.to_string());
        let mut headers = vec![("content-type", "application/json")];
        if let Some(retry) = &retry {
            headers.push(("retry-after", retry.as_str()));
        }
        let sent = hostcalls::send_http_response(
            u32::from(reply.status),
            headers,
            Some(reply.body.as_bytes()),
        );
        if let Err(status) = sent {
            log::warn!("kvroute: local reply {} not sent: {status:?}", reply.status);
        }
        Action::Pause
    }

    fn route_body(&mut self, vm: &Rc<RefCell<Vm>>, route: ApiRoute, body: &[u8]) -> Action {
        let outcome = vm
            .borrow_mut()
            .route_inference(route, body, self.session.as_deref());
        self.act(vm, outcome)
    }

    /// Releases the in-flight count, once, whatever ended the stream.
    fn release(&mut self) {
        if let (Some(flight), Some(vm)) = (self.in_flight.take(), &self.vm) {
            let mut state = vm.borrow_mut();
            state.router.complete(flight.ticket);
            state.released(&flight.address);
        }
    }
}

impl Context for Filter {
    fn on_done(&mut self) -> bool {
        self.release();
        true
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(vm) = self.vm.clone() else {
            return Action::Continue;
        };
        let (header, session_header) = {
            let state = vm.borrow();
            let config = state.gateway.config();
            (
                config.destination_header.clone(),
                config.session_header.clone(),
            )
        };
        // Never let a client choose the destination.
        set_request_header(&header, None);
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        match RequestKind::classify(&method, &path) {
            RequestKind::Inference(route) => {
                self.session = self.get_http_request_header(&session_header);
                if end_of_stream {
                    return self.route_body(&vm, route, &[]);
                }
                self.pending = Some(route);
                Action::Pause
            }
            RequestKind::ListModels => {
                let reply = vm.borrow().list_models();
                match reply {
                    Some(reply) => self.reply(&vm, &reply),
                    None => {
                        let outcome = vm.borrow_mut().route_other();
                        self.act(&vm, outcome)
                    }
                }
            }
            RequestKind::Other => {
                let outcome = vm.borrow_mut().route_other();
                self.act(&vm, outcome)
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(vm), Some(route)) = (self.vm.clone(), self.pending) else {
            return Action::Continue;
        };
        let too_large = vm.borrow().gateway.check_body_size(body_size);
        if let Err(reply) = too_large {
            self.pending = None;
            return self.reply(&vm, &reply);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.pending = None;
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.route_body(&vm, route, &body)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.vm.is_none() || self.in_flight.is_none() {
            return Action::Continue;
        }
        let served = hostcalls::get_property(vec!["upstream", "address"])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok());
        let status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse::<u16>().ok());
        let code_details = hostcalls::get_property(vec!["response", "code_details"])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok());
        let origin = ResponseOrigin::classify(
            code_details.as_deref(),
            self.get_http_response_header(UPSTREAM_TIMING_HEADER)
                .is_some(),
        );
        let (Some(vm), Some(flight)) = (&self.vm, &mut self.in_flight) else {
            return Action::Continue;
        };
        let mut state = vm.borrow_mut();
        // Moves the count to the endpoint that served (a retry walked the fallback list) and
        // feeds the circuit breakers, as the ext_proc service does.
        let report = ResponseReport {
            served: served.as_deref(),
            status,
            origin,
        };
        let _ = state
            .router
            .response_started(&mut flight.ticket, report, crate::vm::now_ms());
        let counted_on = state
            .router
            .workers()
            .get(flight.ticket.worker())
            .map(|w| w.spec.address.clone());
        if let Some(address) = counted_on
            && address != flight.address
        {
            state.moved(&flight.address, &address);
            flight.address = address;
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.release();
    }
}
