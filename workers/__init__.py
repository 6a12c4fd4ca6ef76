"""The browser-facing surface: REST viewsets, the WebSocket consumer and the event relay."""
