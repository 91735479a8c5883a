"""The benchmarks behind `dctrl bench`: ``bus`` (the broker against zmq.proxy), ``chain``
(payment detection and catch-up), ``vend`` (payment to relay pin end to end) and ``faults``
(purchases under kill -9 and SIGSTOP). Each module's ``main(args)`` prints one JSON object."""
