"""Payment gateway adapters: the only payment code that speaks a channel's protocol."""
