"""possync's contracts: settings, queue payloads, source records, warehouse tables. No I/O here."""
