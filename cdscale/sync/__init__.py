"""Weight sync: trainer weights into the running teacher engines."""
