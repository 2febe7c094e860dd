//! The root context: reads and validates the plugin configuration, owns the VM state, and
//! replays sibling VMs' decisions when its queue fills.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use crate::config::{DiscoveryConfig, PluginConfig};
use crate::discovery;
use crate::filter::Filter;
use crate::metrics::Metric;
use crate::vm::{Vm, now_ms};

/// The plugin's root context.
#[derive(Default)]
pub struct Root {
    vm: Option<Rc<RefCell<Vm>>>,
    discovery: Option<DiscoveryConfig>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(vm) = &self.vm else {
            return;
        };
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match discovery::parse(status.as_deref(), &body) {
            Ok(fleet) => {
                let Ok(mut state) = vm.try_borrow_mut() else {
                    return;
                };
                let change = discovery::apply(&mut state.router, &fleet);
                state.metrics.add(Metric::FleetSyncs, 1);
                if change.added + change.removed > 0 {
                    log::info!(
                        "kvroute: worker list refreshed: {} added, {} removed, {} now",
                        change.added,
                        change.removed,
                        state.router.workers().len()
                    );
                }
            }
            Err(err) => log::warn!("kvroute: worker list not refreshed: {err}"),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match PluginConfig::parse(&bytes) {
            Ok(config) => {
                log::info!(
                    "kvroute: configured with {} workers, policy {}",
                    config.workers.len(),
                    config.router.policy.name()
                );
                self.vm = Some(Rc::new(RefCell::new(Vm::new(&config))));
                if let Some(d) = &config.discovery {
                    self.set_tick_period(Duration::from_millis(d.interval_ms));
                }
                self.discovery = config.discovery;
                true
            }
            Err(err) => {
                log::error!("kvroute: refusing to load: {err}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(d) = &self.discovery {
            discovery::request(d);
        }
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        if let Some(vm) = &self.vm
            && let Ok(mut vm) = vm.try_borrow_mut()
        {
            vm.apply_events(now_ms());
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if let Some(vm) = &self.vm
            && let Ok(mut state) = vm.try_borrow_mut()
        {
            state.join_once();
        }
        Some(Box::new(Filter::new(self.vm.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
