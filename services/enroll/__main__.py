"""python -m services.enroll: run the enroll service (API and stream workers) until SIGINT/SIGTERM."""

from services.platform import run_service

if __name__ == "__main__":
    run_service("enroll")
