"""One error hierarchy: everything Lanyard raises is a LanyardError and
also the builtin that code written without Lanyard in mind catches. No
broker needed."""

import socket
import unittest

import lanyard


def unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hierarchy(unittest.TestCase):
    def test_each_error_is_a_lanyard_error_and_its_builtin(self):
        cases = [
            (lambda: lanyard.decode(b"\xff"), lanyard.InvalidInput, ValueError),
            (lambda: lanyard.decode(5), lanyard.WrongType, TypeError),
            (lambda: lanyard.Shadow().resolve("a.b", "cloud"), lanyard.NotFound, KeyError),
            (lambda: lanyard.Shadow(default_policy="loudest"), lanyard.InvalidInput, ValueError),
            (lambda: lanyard.App(f"mqtt://127.0.0.1:{unused_port()}", timeout=1.0),
             lanyard.LinkError, OSError),
            (lambda: lanyard.Shadow().update({"state": {}, "version": 3}),
             lanyard.VersionConflict, lanyard.Rejected),
        ]
        for call, cls, builtin in cases:
            with self.assertRaises(cls) as caught:
                call()
            self.assertIsInstance(caught.exception, builtin)
            self.assertIsInstance(caught.exception, lanyard.LanyardError)
            self.assertTrue(str(caught.exception), f"{cls.__name__} has a message")

    def test_the_hierarchy_is_what_the_docs_say(self):
        for cls, builtin in [
            (lanyard.InvalidInput, ValueError),
            (lanyard.WrongType, TypeError),
            (lanyard.Timeout, TimeoutError),
            (lanyard.LinkError, OSError),
            (lanyard.ConnectionFailed, ConnectionError),
            (lanyard.NotPermitted, PermissionError),
            (lanyard.Closed, RuntimeError),
            (lanyard.NotFound, KeyError),
            (lanyard.Rejected, lanyard.LanyardError),
            (lanyard.ShadowRejected, lanyard.Rejected),
        ]:
            self.assertTrue(issubclass(cls, builtin), cls)
            self.assertTrue(issubclass(cls, lanyard.LanyardError), cls)


if __name__ == "__main__":
    unittest.main()
