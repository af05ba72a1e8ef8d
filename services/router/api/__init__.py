"""The router's transports: the OpenAI HTTP app and its server, the gRPC RouterService."""
