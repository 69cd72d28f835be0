from services.common.runtime import main
from services.gateway.service import build

if __name__ == "__main__":
    main("gateway", build)
