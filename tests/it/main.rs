//! The workspace-level integration tests, one binary (one link): the command line, whole runs as
//! processes, the real model, a Python environment, the replay service as a process, a secured
//! run with an intruder.

mod cli;
mod common;
mod end_to_end;
mod real_model;
mod remote_env;
mod replay_service;
mod security;
