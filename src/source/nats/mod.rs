//! `type = "nats"`: events from a JetStream stream, through a durable pull consumer that
//! every instance shares.

mod acks;

pub use acks::NatsAckHandle;
