"""gradsal.reference_models: small trained models and architecture builders that ship with gradsal."""
